"""Precision: the fraction of predictions of a class that are correct, as scikit-learn computes it,
macro-averaged over classes by default.

An offline copy of the Hub's `evaluate-metric/precision`, except that `average` defaults to
`"macro"` (the Hub's defaults to `"binary"`) so that it fits any number of classes and can be
combined with accuracy in `evaluate.combine` without per-metric arguments.
"""

import datasets
import evaluate
from sklearn.metrics import precision_score


_DESCRIPTION = "Precision = TP / (TP + FP), per class."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted class ids.
    references (`list` of `int`): True class ids.
    labels (`list` of `int`, *optional*): The classes to average over; defaults to those present in
        `references` or `predictions`.
    pos_label (`int`, defaults to 1): The positive class when `average="binary"`.
    average (`str` or `None`, defaults to `"macro"`): `"macro"` (unweighted mean over classes),
        `"micro"`, `"weighted"`, `"binary"`, or `None` (one score per class).
    sample_weight (`list` of `float`, *optional*): Per-example weights.
    zero_division (`"warn"`, 0 or 1, defaults to `"warn"`): The value for classes where the score is
        undefined; `"warn"` uses 0 and warns.

Returns:
    precision (`float`, or `list` of `float` when `average=None`): in [0, 1].
"""

_CITATION = """
@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython}, author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Precision(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_score.html"],
        )

    def _compute(
        self,
        predictions,
        references,
        labels=None,
        pos_label=1,
        average="macro",
        sample_weight=None,
        zero_division="warn",
    ):
        score = precision_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        return {"precision": score.tolist() if average is None else float(score)}
