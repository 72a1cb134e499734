"""Accuracy: the fraction of predictions equal to their reference, as scikit-learn computes it.

An offline copy of the Hub's `evaluate-metric/accuracy` (single-label case), loadable with
`evaluate.load("<this folder>")`.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score


_DESCRIPTION = "Accuracy = (TP + TN) / (TP + TN + FP + FN): the fraction of correct predictions."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted class ids.
    references (`list` of `int`): True class ids.
    normalize (`bool`, defaults to `True`): Return the fraction (`True`) or the count (`False`) of correct predictions.
    sample_weight (`list` of `float`, *optional*): Per-example weights.

Returns:
    accuracy (`float`): in [0, 1] when normalized.
"""

_CITATION = """
@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython}, author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        score = accuracy_score(references, predictions, normalize=normalize, sample_weight=sample_weight)
        return {"accuracy": float(score)}
