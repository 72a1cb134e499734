import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from hf_feedback.reports.plots import (
    _confusion_matrix_figure,
    confusion_matrix,
    plot_confusion_matrix,
    plot_training_curves,
)


def _log_history(with_eval=True):
    """The shape of `trainer.state.log_history`: train logs, eval logs, and the final summary."""
    history = []
    for step in range(1, 11):
        learning_rate = 1e-3 * min(step, 4) / 4
        history.append(
            {"loss": 2.0 / step, "grad_norm": 1.0, "learning_rate": learning_rate, "epoch": step / 10, "step": step}
        )
        if with_eval and step % 5 == 0:
            history.append(
                {
                    "eval_loss": 1.5 / step,
                    "eval_accuracy": 0.5 + step / 40,
                    "eval_f1": 0.4 + step / 40,
                    "eval_runtime": 0.1,
                    "eval_samples_per_second": 100.0,
                    "eval_steps_per_second": 10.0,
                    "epoch": step / 10,
                    "step": step,
                }
            )
    history.append({"train_runtime": 1.0, "train_loss": 0.9, "epoch": 1.0, "step": 10})
    return history


def _assert_nontrivial_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
    assert pixels.std() > 0.01  # not a blank canvas


def test_plot_training_curves_writes_three_pngs_with_eval(tmp_path):
    open_figures = plt.get_fignums()
    paths = plot_training_curves(_log_history(), tmp_path / "plots")

    assert [path.name for path in paths] == ["loss.png", "learning_rate.png", "eval_metrics.png"]
    for path in paths:
        _assert_nontrivial_png(path)
    assert plt.get_fignums() == open_figures  # nothing left in pyplot's registry


def test_plot_training_curves_without_eval_skips_metrics_plot(tmp_path):
    paths = plot_training_curves(_log_history(with_eval=False), tmp_path)
    assert [path.name for path in paths] == ["loss.png", "learning_rate.png"]
    assert not (tmp_path / "eval_metrics.png").exists()


def test_plot_training_curves_requires_training_loss(tmp_path):
    eval_only = [entry for entry in _log_history() if "loss" not in entry]
    with pytest.raises(ValueError, match="no training loss"):
        plot_training_curves(eval_only, tmp_path)


def test_confusion_matrix_counts_true_rows_predicted_columns():
    labels = [0, 0, 0, 1, 1, 2]
    predictions = [0, 1, 1, 1, 0, 1]
    expected = np.array(
        [
            [1, 2, 0],
            [1, 1, 0],
            [0, 1, 0],
        ]
    )
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, num_labels=3), expected)
    # A class absent from both still gets its row and column.
    np.testing.assert_array_equal(confusion_matrix([0, 1], [0, 0], num_labels=3), [[1, 0, 0], [1, 0, 0], [0, 0, 0]])


def test_confusion_matrix_rejects_ids_out_of_range():
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix([0, 1], [0, 2], num_labels=2)


def test_plot_confusion_matrix_writes_png(tmp_path):
    path = tmp_path / "cm" / "confusion.png"
    assert plot_confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], ["negative", "positive"], path) == path
    _assert_nontrivial_png(path)


def test_confusion_matrix_figure_annotates_each_cell_with_its_count():
    counts = np.array([[5, 1], [0, 12]])
    axes = _confusion_matrix_figure(counts, ["negative", "positive"]).axes[0]
    cells = {(text.get_position(), text.get_text()) for text in axes.texts}
    assert cells == {((0, 0), "5"), ((1, 0), "1"), ((0, 1), "0"), ((1, 1), "12")}  # position is (column, row)
    assert [label.get_text() for label in axes.get_xticklabels()] == ["negative", "positive"]
