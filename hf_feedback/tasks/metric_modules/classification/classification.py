"""Classification metrics in one `evaluate` module: accuracy and F1, precision and recall.

An offline stand-in for the Hub's `evaluate-metric/accuracy`, `f1`, `precision` and `recall`: the same
scikit-learn arithmetic, one pass, no download. F1, precision and recall are macro-averaged by default
(the Hub's default, "binary", only fits two classes).
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

_DESCRIPTION = "Accuracy, and F1 / precision / recall averaged over classes (macro by default)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted class ids.
    references (`list` of `int`): True class ids.
    average (`str` or `None`, defaults to `"macro"`): how F1, precision and recall combine over classes:
        `"macro"` (unweighted mean), `"micro"`, `"weighted"`, `"binary"`, or `None` (one score per class).
    labels (`list` of `int`, *optional*): the classes to average over; default: those present.
    zero_division (`"warn"`, 0 or 1, defaults to `"warn"`): the value for a class never predicted (precision)
        or never present (recall); `"warn"` uses 0 and warns.

Returns:
    accuracy, f1, precision, recall: floats in [0, 1] (lists when `average=None`).
"""

_CITATION = """
@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython}, author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#classification-metrics"],
        )

    def _compute(self, predictions, references, average="macro", labels=None, zero_division="warn"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            references, predictions, average=average, labels=labels, zero_division=zero_division
        )
        as_output = (lambda x: x.tolist()) if average is None else float
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "f1": as_output(f1),
            "precision": as_output(precision),
            "recall": as_output(recall),
        }
