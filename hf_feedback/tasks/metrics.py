"""Sequence-classification metrics for `Trainer(compute_metrics=...)`, computed by `evaluate` without the Hub.

`evaluate.load("accuracy")` fetches the metric script from the Hugging Face Hub. hf_feedback ships its metric
modules, `hf_feedback/tasks/metric_modules/<name>/<name>.py` (scikit-learn and SciPy do the arithmetic), and loads them
by absolute path, which `evaluate` resolves locally and never sends to the Hub, so metrics work offline
(`HF_HUB_OFFLINE=1`).

What a problem type (transformers' `config.problem_type`) reports and which of its metrics selects the best
checkpoint is `PROBLEM_TYPES`, the one table the recipe, the model card and the plots read.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import evaluate
import numpy as np
from transformers import EvalPrediction
from transformers.utils import logging

logger = logging.get_logger(__name__)

METRIC_NAMES = ("accuracy", "f1", "precision", "recall")
REGRESSION_METRIC_NAMES = ("mse", "mae", "pearson", "spearman")
MULTI_LABEL_METRIC_NAMES = ("subset_accuracy", "micro_f1", "macro_f1")
# A multi-label model says yes to a class when its sigmoid passes this (logit > 0): metrics, pipeline and predict.
MULTI_LABEL_THRESHOLD = 0.5


@dataclass(frozen=True)
class ProblemType:
    metrics: tuple[str, ...]  # what compute_metrics returns (Trainer prefixes eval_ / test_)
    best: str  # the metric that selects the best checkpoint by default (errors: lower is better)


PROBLEM_TYPES = {
    # Macro F1 weighs a minority class as much as a majority one.
    "single_label_classification": ProblemType(METRIC_NAMES, "f1"),
    # The loss's own measure; Pearson and Spearman (STS-B's) ignore the scale and offset of the predictions.
    "regression": ProblemType(REGRESSION_METRIC_NAMES, "mse"),
    # Macro F1 again, so that rare labels count.
    "multi_label_classification": ProblemType(MULTI_LABEL_METRIC_NAMES, "macro_f1"),
}

_METRIC_MODULES = Path(__file__).parent / "metric_modules"


def load_metric_module(name: str) -> evaluate.EvaluationModule:
    """The `evaluate` module hf_feedback ships as metric_modules/NAME/NAME.py, loaded offline and in memory."""
    folder = _METRIC_MODULES / name
    if not (folder / f"{name}.py").is_file():
        raise FileNotFoundError(
            f"The {name} metric module is missing at {folder / f'{name}.py'}; reinstall hf_feedback with its "
            f"package data (hf_feedback/tasks/metric_modules/{name}/{name}.py)."
        )
    # The folder, not the script: evaluate names the module after the folder.
    return evaluate.load(str(folder), keep_in_memory=True)


def load_classification_metrics() -> evaluate.EvaluationModule:
    """Accuracy and macro-averaged F1, precision and recall as one `evaluate` module.

    `compute(predictions=..., references=...)` returns `{"accuracy", "f1", "precision", "recall"}`.
    The module keeps its state in memory (no cache files), which is safe when several processes evaluate
    at once: Trainer has already gathered the predictions by then.

    Raises `FileNotFoundError` if the module is missing (hf_feedback installed without its package data).
    """
    return load_metric_module("classification")


def logits_of(eval_prediction: EvalPrediction) -> np.ndarray:
    """The logits of an evaluation: models that also return hidden states or attentions give a tuple, logits
    first."""
    predictions = eval_prediction.predictions
    return predictions[0] if isinstance(predictions, tuple) else predictions


def build_compute_metrics(problem_type: str = "single_label_classification") -> Callable[[EvalPrediction], dict]:
    """A `compute_metrics` function for sequence classification with `transformers.Trainer`, for `problem_type`
    (a key of PROBLEM_TYPES); regression gets `build_regression_metrics`'s.

    It takes the arg-max class of the logits (the last axis) and returns accuracy and macro
    F1/precision/recall as floats; Trainer logs them as `eval_accuracy`, `eval_f1`, ...
    The metrics load here, so a missing metric fails before training rather than at the
    first evaluation.

    A class the model never predicts has no precision (and a class absent from the references
    no recall); they count as 0 in the macro averages, and the first evaluation where that
    happens says so once through the logger (scikit-learn would warn at every evaluation).
    """
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {list(PROBLEM_TYPES)}, got {problem_type!r}")
    if problem_type == "regression":
        return build_regression_metrics()
    if problem_type == "multi_label_classification":
        return build_multi_label_metrics()
    metrics = load_classification_metrics()
    reported = False

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        nonlocal reported
        predictions = np.argmax(logits_of(eval_prediction), axis=-1)  # (N, num_labels) -> (N,)
        references = eval_prediction.label_ids
        # zero_division=0 is the 0 that scikit-learn's default ("warn") gives too, without its warning.
        results = metrics.compute(predictions=predictions, references=references, zero_division=0)
        if not reported:
            reported = _report_undefined_scores(predictions, references)
        return {name: float(results[name]) for name in METRIC_NAMES}

    return compute_metrics


def build_regression_metrics() -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for one predicted number per text: MSE, MAE, Pearson and Spearman of the (N, 1) logits."""
    metrics = load_metric_module("regression")

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        results = metrics.compute(predictions=np.reshape(logits_of(eval_prediction), -1), references=np.reshape(
            eval_prediction.label_ids, -1))
        return {name: float(results[name]) for name in REGRESSION_METRIC_NAMES}

    return compute_metrics


def build_multi_label_metrics(threshold: float = MULTI_LABEL_THRESHOLD) -> Callable[[EvalPrediction], dict]:
    """`compute_metrics` for multi-hot labels: each class is predicted where sigmoid(logit) > `threshold`."""
    metrics = load_metric_module("multilabel")
    cut = float(np.log(threshold / (1 - threshold)))  # sigmoid(x) > threshold  <=>  x > logit(threshold)

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        results = metrics.compute(predictions=(logits_of(eval_prediction) > cut).astype(np.int32),
                                  references=(eval_prediction.label_ids > 0.5).astype(np.int32))
        return {name: float(results[name]) for name in MULTI_LABEL_METRIC_NAMES}

    return compute_metrics


def _report_undefined_scores(predictions: np.ndarray, references: np.ndarray) -> bool:
    """Log which classes had no precision or no recall; returns whether there was anything to say."""
    predicted, present = set(predictions.tolist()), set(references.tolist())
    gaps = []
    if present - predicted:
        gaps.append(f"the model never predicted class(es) {sorted(present - predicted)}, so their precision "
                    "counts as 0 in the macro precision and F1")
    if predicted - present:
        gaps.append(f"class(es) {sorted(predicted - present)} never occur in the references, so their recall "
                    "counts as 0 in the macro recall and F1")
    if gaps:
        logger.warning(f"At this evaluation {'; '.join(gaps)}. (Said once per run; later evaluations may differ.)")
    return bool(gaps)
