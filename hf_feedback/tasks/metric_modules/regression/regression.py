"""Regression metrics in one `evaluate` module: mean squared and absolute error, Pearson and Spearman correlation.

An offline stand-in for the Hub's `evaluate-metric/mse`, `mae`, `pearsonr` and `spearmanr` (the GLUE STS-B
metrics): the same scikit-learn and SciPy arithmetic, one pass, no download.
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import mean_absolute_error, mean_squared_error

_DESCRIPTION = "Mean squared error, mean absolute error, Pearson's r and Spearman's rho of predicted numbers."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): Predicted values.
    references (`list` of `float`): True values.

Returns:
    mse, mae: floats >= 0. pearson, spearman: floats in [-1, 1]; 0 when either side is constant (undefined).
"""

_CITATION = """
@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython}, author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Regression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float32"),
                                        "references": datasets.Value("float32")}),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#regression-metrics"],
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
        # A constant side (an untrained model's first evaluation) has no correlation; SciPy would warn and give NaN.
        varies = predictions.std() > 0 and references.std() > 0
        return {
            "mse": float(mean_squared_error(references, predictions)),
            "mae": float(mean_absolute_error(references, predictions)),
            "pearson": float(pearsonr(predictions, references)[0]) if varies else 0.0,
            "spearman": float(spearmanr(predictions, references)[0]) if varies else 0.0,
        }
