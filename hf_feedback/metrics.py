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
    """
    metrics = load_classification_metrics()

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        # Models that also return hidden states or attentions give a tuple with the logits first.
        if isinstance(logits, tuple):
            logits = logits[0]
        predictions = np.argmax(logits, axis=-1)  # (N, num_labels) -> (N,)
        results = metrics.compute(predictions=predictions, references=eval_prediction.label_ids)
        return {name: float(results[name]) for name in METRIC_NAMES}

    return compute_metrics
