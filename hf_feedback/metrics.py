"""Classification metrics for `Trainer(compute_metrics=...)`, computed by `evaluate` without the Hub.

`evaluate.load("accuracy")` fetches the metric script from the Hugging Face Hub. hf_feedback ships one
metric module, `hf_feedback/metric_modules/classification/classification.py` (scikit-learn does the
arithmetic), and loads it by absolute path, which `evaluate` resolves locally and never sends to the Hub,
so metrics work offline (`HF_HUB_OFFLINE=1`).
"""

from collections.abc import Callable
from pathlib import Path

import evaluate
import numpy as np
from transformers import EvalPrediction
from transformers.utils import logging

logger = logging.get_logger(__name__)

METRIC_NAMES = ("accuracy", "f1", "precision", "recall")

_METRIC_MODULE = Path(__file__).parent / "metric_modules" / "classification"


def load_classification_metrics() -> evaluate.EvaluationModule:
    """Accuracy and macro-averaged F1, precision and recall as one `evaluate` module.

    `compute(predictions=..., references=...)` returns `{"accuracy", "f1", "precision", "recall"}`.
    The module keeps its state in memory (no cache files), which is safe when several processes evaluate
    at once: Trainer has already gathered the predictions by then.

    Raises `FileNotFoundError` if the module is missing (hf_feedback installed without its package data).
    """
    script = _METRIC_MODULE / "classification.py"
    if not script.is_file():
        raise FileNotFoundError(
            f"The classification metric module is missing at {script}; reinstall hf_feedback with its package "
            "data (hf_feedback/metric_modules/classification/classification.py)."
        )
    # The folder, not the script: evaluate names the module after the folder.
    return evaluate.load(str(_METRIC_MODULE), keep_in_memory=True)


def build_compute_metrics() -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` function for sequence classification with `transformers.Trainer`.

    It takes the arg-max class of the logits (the last axis) and returns accuracy and macro
    F1/precision/recall as floats; Trainer logs them as `eval_accuracy`, `eval_f1`, ...
    The metrics load here, so a missing metric fails before training rather than at the
    first evaluation.

    A class the model never predicts has no precision (and a class absent from the references
    no recall); they count as 0 in the macro averages, and the first evaluation where that
    happens says so once through the logger (scikit-learn would warn at every evaluation).
    """
    metrics = load_classification_metrics()
    reported = False

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        nonlocal reported
        logits = eval_prediction.predictions
        # Models that also return hidden states or attentions give a tuple with the logits first.
        if isinstance(logits, tuple):
            logits = logits[0]
        predictions = np.argmax(logits, axis=-1)  # (N, num_labels) -> (N,)
        references = eval_prediction.label_ids
        # zero_division=0 is the 0 that scikit-learn's default ("warn") gives too, without its warning.
        results = metrics.compute(predictions=predictions, references=references, zero_division=0)
        if not reported:
            reported = _report_undefined_scores(predictions, references)
        return {name: float(results[name]) for name in METRIC_NAMES}

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
