"""The two figures saved with every run: training curves and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # the object API renders with Agg and needs neither pyplot nor a display

from ..io import atomic_open


def _save(fig: Figure, path: str | Path) -> None:
    """Save ``fig`` atomically, in the format its file name ends with."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=100)


def _series(log_history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
    return [s for s, _ in points], [v for _, v in points]


def _accuracy_panel(ax: Any, log_history: Sequence[dict[str, Any]], final: tuple[str, dict[str, Any]] | None) -> None:
    """Evaluation accuracy during training, and the final split's accuracy as stars at the last step; never empty:
    a run evaluated neither during nor after training says so in the panel."""
    evaluated = False
    for key, label in (("eval_top1_accuracy", "top-1"), ("eval_top5_accuracy", "top-5")):
        steps, values = _series(log_history, key)
        if steps:
            ax.plot(steps, values, marker="o", label=label)
            evaluated = True
    last_step = max((entry["step"] for entry in log_history if "step" in entry), default=0)
    split, metrics = final or ("", {})
    for key, label, marker in (("top1_accuracy", "top-1", "*"), ("top5_accuracy", "top-5", "P")):
        if metrics.get(key) is not None:
            value, name = metrics[key], f"{split} {label} {100 * metrics[key]:.1f}%"
            ax.scatter([last_step], [value], marker=marker, s=160, zorder=3, label=name)
    title = "Evaluation accuracy" if evaluated else "Final accuracy (no evaluation during training)"
    ax.set(title=title, xlabel="step", ylabel="accuracy", ylim=(0, 1.05))
    if not ax.get_legend_handles_labels()[0]:
        ax.text(0.5, 0.5, "No evaluation during or after training", ha="center", va="center", transform=ax.transAxes)


def training_curves_figure(
    log_history: Sequence[dict[str, Any]], final: tuple[str, dict[str, Any]] | None = None
) -> Figure:
    """Training and evaluation loss, accuracy and the learning rate against the optimizer step; ``final`` is the
    split and metrics of the finished model (``("test", {"top1_accuracy": ...})``), drawn at the last step."""
    fig = Figure(figsize=(15, 4), layout="constrained")
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3, sharex=True)  # one step axis: a lone final point sits at the end
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        steps, values = _series(log_history, key)
        if steps:
            loss_ax.plot(steps, values, marker="o" if len(steps) < 20 else None, label=label)
    loss_ax.set(title="Loss", xlabel="step", ylabel="cross-entropy")
    _accuracy_panel(acc_ax, log_history, final)
    steps, values = _series(log_history, "learning_rate")
    lr_ax.plot(steps, values)
    lr_ax.set(title="Learning rate", xlabel="step")
    for ax in (loss_ax, acc_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right" if ax is acc_ax else "best")
    return fig


def plot_training_curves(
    log_history: Sequence[dict[str, Any]], path: str | Path, *, final: tuple[str, dict[str, Any]] | None = None
) -> Path:
    """Save :func:`training_curves_figure` to ``path``."""
    _save(training_curves_figure(log_history, final), path)
    return Path(path)


# Past this many classes tick labels are unreadable and the figure would grow without bound (NABirds has 555).
MAX_LABELLED_CLASSES = 60
MAX_FIGURE_INCHES = 20.0


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path) -> Path:
    """Row-normalised confusion matrix (rows: true class), with the raw counts written in small matrices.

    The figure is capped at ``MAX_FIGURE_INCHES``; above ``MAX_LABELLED_CLASSES`` classes the axes show class
    indices instead of names (``metrics.json`` keeps the full per-class table).
    """
    counts = np.asarray(matrix, dtype=np.int64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(MAX_FIGURE_INCHES, max(4.0, 0.45 * len(labels) + 2))
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if len(labels) <= MAX_LABELLED_CLASSES:
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, labels, rotation=90)
        ax.set_yticks(ticks, labels)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    if len(labels) <= 20:
        for i, j in np.ndindex(counts.shape):
            ax.text(j, i, counts[i, j], ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
    _save(fig, path)
    return Path(path)
