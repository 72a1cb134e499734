"""Multi-label classification metrics in one `evaluate` module: subset accuracy, micro and macro F1.

Each row holds a 0/1 decision per class (predictions) and the 0/1 truth (references). Subset accuracy counts the
rows whose every decision is right; micro F1 pools every (row, class) decision; macro F1 averages the per-class F1,
so a rare label weighs as much as a common one. scikit-learn does the arithmetic, offline.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score

_DESCRIPTION = "Subset accuracy, micro-averaged and macro-averaged F1 of multi-label 0/1 decisions."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): per row, a 0/1 decision for every class.
    references (`list` of `list` of `int`): per row, the 0/1 truth for every class.
    zero_division (0 or 1, defaults to 0): F1 of a class never predicted nor present.

Returns:
    subset_accuracy, micro_f1, macro_f1: floats in [0, 1].
"""

_CITATION = """
@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython}, author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Multilabel(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.List(datasets.Value("int32")),
                                        "references": datasets.List(datasets.Value("int32"))}),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#multilabel-ranking-metrics"],
        )

    def _compute(self, predictions, references, zero_division=0):
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {
            "subset_accuracy": float(accuracy_score(references, predictions)),
            "micro_f1": float(f1_score(references, predictions, average="micro", zero_division=zero_division)),
            "macro_f1": float(f1_score(references, predictions, average="macro", zero_division=zero_division)),
        }
