import socket

import evaluate
import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from transformers import EvalPrediction

from hf_feedback.tasks import metrics
from hf_feedback.tasks.metrics import METRIC_NAMES, build_compute_metrics, load_classification_metrics


# Three imbalanced classes. Per class (precision, recall, F1): 0 -> (3/4, 3/4, 3/4),
# 1 -> (1/3, 1/2, 2/5), 2 -> (1, 1/2, 2/3); 5 of 8 correct.
REFERENCES = np.array([0, 0, 0, 0, 1, 1, 2, 2])
PREDICTIONS = np.array([0, 0, 0, 1, 1, 0, 2, 1])
EXPECTED = {
    "accuracy": 5 / 8,
    "f1": (3 / 4 + 2 / 5 + 2 / 3) / 3,
    "precision": (3 / 4 + 1 / 3 + 1) / 3,
    "recall": (3 / 4 + 1 / 2 + 1 / 2) / 3,
}


@pytest.fixture
def offline(monkeypatch):
    """No Hub, and no network at all: any socket connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_hand_example_has_macro_f1_different_from_accuracy():
    assert EXPECTED["f1"] != pytest.approx(EXPECTED["accuracy"])


def test_combined_metrics_load_offline_and_match_hand_computed_and_sklearn(offline):
    module = load_classification_metrics()
    assert isinstance(module, evaluate.EvaluationModule)

    results = module.compute(predictions=PREDICTIONS, references=REFERENCES)

    assert set(results) == set(METRIC_NAMES)
    for name, value in EXPECTED.items():
        assert results[name] == pytest.approx(value), name
    assert results["accuracy"] == pytest.approx(accuracy_score(REFERENCES, PREDICTIONS))
    assert results["f1"] == pytest.approx(f1_score(REFERENCES, PREDICTIONS, average="macro"))
    assert results["precision"] == pytest.approx(precision_score(REFERENCES, PREDICTIONS, average="macro"))
    assert results["recall"] == pytest.approx(recall_score(REFERENCES, PREDICTIONS, average="macro"))


@pytest.mark.parametrize("average", ["micro", "weighted", None])
def test_metric_module_passes_average_through_to_sklearn(offline, average):
    result = load_classification_metrics().compute(predictions=PREDICTIONS, references=REFERENCES, average=average)
    for name, score in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
        expected = score(REFERENCES, PREDICTIONS, average=average)
        assert result[name] == pytest.approx(expected.tolist() if average is None else expected), name
    assert result["accuracy"] == pytest.approx(5 / 8)


def test_compute_metrics_takes_argmax_of_logits_in_a_tuple(offline):
    compute_metrics = build_compute_metrics()
    # One-hot logits with noise below the margin: the arg-max is PREDICTIONS.
    logits = np.eye(3)[PREDICTIONS] + 0.1 * np.random.default_rng(0).random((len(PREDICTIONS), 3))
    hidden_states = np.zeros((len(PREDICTIONS), 4, 2))

    for predictions in (logits, (logits, hidden_states)):
        results = compute_metrics(EvalPrediction(predictions=predictions, label_ids=REFERENCES))
        assert set(results) == set(METRIC_NAMES)
        assert all(type(value) is float for value in results.values())
        for name, value in EXPECTED.items():
            assert results[name] == pytest.approx(value), name


# (predictions, references, what the log says, the macro score that counts the undefined one as 0)
UNDEFINED_SCORES = [
    ([0, 0, 1, 1], [0, 1, 2, 1], "never predicted class(es) [2], so their precision",
     ("precision", (1 / 2 + 1 / 2 + 0) / 3)),
    ([0, 2, 1, 1], [0, 0, 1, 1], "class(es) [2] never occur in the references, so their recall",
     ("recall", (1 / 2 + 1 + 0) / 3)),
]


@pytest.mark.parametrize("predictions, references, said, score", UNDEFINED_SCORES)
def test_an_undefined_score_is_reported_once_in_words(predictions, references, said, score, offline, caplog, recwarn):
    compute_metrics = build_compute_metrics()
    logits = np.eye(3)[predictions]
    for _ in range(3):  # three evaluations
        results = compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array(references)))

    assert [w for w in recwarn if issubclass(w.category, UndefinedMetricWarning)] == []
    messages = [record.getMessage() for record in caplog.records if record.name == "hf_feedback.tasks.metrics"]
    assert len(messages) == 1 and said in messages[0]
    name, value = score
    assert results[name] == pytest.approx(value)


def test_missing_metric_script_raises_clear_error(offline, monkeypatch, tmp_path):
    monkeypatch.setattr(metrics, "_METRIC_MODULES", tmp_path)
    with pytest.raises(FileNotFoundError, match="classification metric module is missing"):
        build_compute_metrics()
    with pytest.raises(FileNotFoundError, match="regression metric module is missing"):
        build_compute_metrics("regression")
