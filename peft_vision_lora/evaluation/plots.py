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


def plot_training_curves(log_history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Training and evaluation loss, evaluation accuracy and the learning rate against the optimizer step."""
    fig = Figure(figsize=(15, 4), layout="constrained")
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        steps, values = _series(log_history, key)
        if steps:
            loss_ax.plot(steps, values, marker="o" if len(steps) < 20 else None, label=label)
    loss_ax.set(title="Loss", xlabel="step", ylabel="cross-entropy")
    for key, label in (("eval_top1_accuracy", "top-1"), ("eval_top5_accuracy", "top-5")):
        steps, values = _series(log_history, key)
        if steps:
            acc_ax.plot(steps, values, marker="o", label=label)
    acc_ax.set(title="Evaluation accuracy", xlabel="step", ylabel="accuracy", ylim=(0, 1.02))
    steps, values = _series(log_history, "learning_rate")
    lr_ax.plot(steps, values)
    lr_ax.set(title="Learning rate", xlabel="step")
    for ax in (loss_ax, acc_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    _save(fig, path)
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
