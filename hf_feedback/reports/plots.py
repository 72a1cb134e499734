"""Plots of a training run: loss, learning rate and eval metrics from `trainer.state.log_history`,
and the test split's confusion matrix (classes) or predicted-vs-true scatter (regression).

Figures are `matplotlib.figure.Figure` objects saved straight to PNG, never pyplot figures, so
plotting neither needs a display nor leaves figures open in pyplot's global registry.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix as _sklearn_confusion_matrix


# Suffixes of the bookkeeping numbers Trainer logs next to eval metrics (eval_runtime,
# eval_samples_per_second, eval_model_preparation_time, ...): not metrics, not plotted.
_EVAL_BOOKKEEPING_SUFFIXES = ("_runtime", "_per_second", "_preparation_time", "_compilation_time")


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def _series(entries: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(entry["step"], entry[key]) for entry in entries if key in entry]
    return [step for step, _ in points], [value for _, value in points]


def plot_training_curves(log_history: list[dict], output_dir: str | Path) -> list[Path]:
    """Write PNG plots of a run from `trainer.state.log_history`; return their paths.

    - `loss.png`: training loss per step, with eval loss when the history has it.
    - `learning_rate.png`: the logged learning rate per step.
    - `eval_metrics.png`: every logged `eval_*` metric (accuracy, f1, ...) per step, written
      only when eval entries carry metrics; loss and timing numbers are left out.

    Training entries are those with a `loss` key (Trainer logs every `logging_steps`).
    Raises `ValueError` if there are none, or if they lack `learning_rate`.
    """
    train_entries = [entry for entry in log_history if "loss" in entry]
    if not train_entries:
        raise ValueError(
            "log_history has no training loss entries (dicts with 'loss'); "
            "train with logging_steps small enough to log at least once."
        )
    if not all("learning_rate" in entry for entry in train_entries):
        raise ValueError("log_history's training entries lack 'learning_rate'.")
    eval_entries = [entry for entry in log_history if any(key.startswith("eval_") for key in entry)]
    eval_metrics = sorted(
        {
            key
            for entry in eval_entries
            for key in entry
            if key.startswith("eval_") and key != "eval_loss" and not key.endswith(_EVAL_BOOKKEEPING_SUFFIXES)
        }
    )

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    axes.plot(*_series(train_entries, "loss"), label="train")
    if any("eval_loss" in entry for entry in eval_entries):
        axes.plot(*_series(eval_entries, "eval_loss"), marker="o", label="eval")
    axes.set(xlabel="step", ylabel="loss", title="Loss")
    axes.legend()
    paths.append(_save(figure, output_dir / "loss.png"))

    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    axes.plot(*_series(train_entries, "learning_rate"))
    axes.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    paths.append(_save(figure, output_dir / "learning_rate.png"))

    if eval_metrics:
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        for key in eval_metrics:
            axes.plot(*_series(eval_entries, key), marker="o", label=key.removeprefix("eval_"))
        axes.set(xlabel="step", ylabel="value", title="Evaluation metrics")
        axes.legend()
        paths.append(_save(figure, output_dir / "eval_metrics.png"))

    return paths


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_labels: int) -> np.ndarray:
    """Counts of (true label, predicted label) pairs: entry [i, j] is how many examples of class
    i were predicted as class j. Shape (num_labels, num_labels), every class has a row and a
    column even if absent. Raises `ValueError` for ids outside [0, num_labels), which
    scikit-learn would silently drop.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels and predictions differ in shape: {labels.shape} vs {predictions.shape}.")
    for name, ids in (("labels", labels), ("predictions", predictions)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_labels):
            raise ValueError(f"{name} must be class ids in [0, {num_labels}), got values {sorted(set(ids.tolist()))}.")
    return _sklearn_confusion_matrix(labels, predictions, labels=np.arange(num_labels))


def _confusion_matrix_figure(counts: np.ndarray, label_names: Sequence[str]) -> Figure:
    size = 2.5 + 0.6 * len(label_names)
    figure = Figure(figsize=(size, size))
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.arange(len(label_names))
    axes.set_xticks(ticks, label_names, rotation=45, ha="right")
    axes.set_yticks(ticks, label_names)
    axes.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    # Light text on dark cells, dark text on light ones.
    threshold = counts.max() / 2
    for (row, column), count in np.ndenumerate(counts):
        axes.text(column, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    return figure


def plot_confusion_matrix(
    labels: Sequence[int], predictions: Sequence[int], label_names: Sequence[str], path: str | Path
) -> Path:
    """Write a confusion-matrix heat map (rows: true class, columns: predicted) with the count in
    each cell to `path` (PNG); return the path."""
    counts = confusion_matrix(labels, predictions, num_labels=len(label_names))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(_confusion_matrix_figure(counts, label_names), path)


def plot_regression(labels: Sequence[float], predictions: Sequence[float], name: str, path: str | Path) -> Path:
    """Write a predicted-vs-true scatter of a regression's test split to `path` (PNG), with the diagonal where
    the two agree and Pearson's r in the title; return the path."""
    labels, predictions = np.asarray(labels, dtype=float).reshape(-1), np.asarray(predictions, dtype=float).reshape(-1)
    if labels.shape != predictions.shape or not labels.size:
        raise ValueError(f"labels and predictions must be equal, non-empty: {labels.shape} vs {predictions.shape}.")
    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    axes.scatter(labels, predictions, s=8, alpha=0.4)
    low, high = min(labels.min(), predictions.min()), max(labels.max(), predictions.max())
    axes.plot([low, high], [low, high], color="grey", linewidth=1, label="predicted = true")
    varies = labels.std() > 0 and predictions.std() > 0
    r = f"Pearson r {np.corrcoef(labels, predictions)[0, 1]:.3f}" if varies else "constant predictions"
    axes.set(xlabel=f"true {name}", ylabel=f"predicted {name}", title=f"Test predictions ({r})")
    axes.legend(loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(figure, path)
