"""The most confident mistakes of a classifier: the picture people look at first when a model disappoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from matplotlib.figure import Figure  # the object API renders with Agg and needs neither pyplot nor a display

MISTAKES_FILE = "mistakes.png"
MAX_COLUMNS = 4


@dataclass
class Mistake:
    """Sample ``index`` of the split, of class ``true``, predicted ``predicted`` with probability ``score``."""

    index: int
    true: str
    predicted: str
    score: float


def most_confident_mistakes(
    logits: torch.Tensor, references: torch.Tensor, labels: Sequence[str], count: int = 16
) -> list[Mistake]:
    """The ``count`` wrong predictions with the highest probability, most confident first (ties: dataset order)."""
    probs = logits.float().softmax(-1)
    scores, predictions = probs.max(-1)
    wrong = (predictions != references).nonzero().flatten().tolist()
    wrong.sort(key=lambda i: -float(scores[i]))
    return [
        Mistake(i, labels[int(references[i])], labels[int(predictions[i])], float(scores[i])) for i in wrong[:count]
    ]


def plot_mistakes(
    mistakes: Sequence[Mistake],
    load_image: Callable[[int], PIL.Image.Image],
    path: str | Path,
    *,
    num_samples: int,
) -> Path:
    """A grid of the mistakes (image, true and predicted label, score); ``load_image(index)`` reads sample ``index``.

    With no mistakes the figure says so, so the file always exists after an evaluation.
    """
    if not mistakes:
        fig = Figure(figsize=(6, 1.5), layout="constrained")
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, f"No mistakes on {num_samples} images.", ha="center", va="center", fontsize=14)
        fig.savefig(path, dpi=100)
        return Path(path)
    columns = min(MAX_COLUMNS, len(mistakes))
    rows = -(-len(mistakes) // columns)
    fig = Figure(figsize=(max(3.2 * columns, 4.5), 3.6 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False).flatten())
    for ax in axes:
        ax.axis("off")
    for ax, mistake in zip(axes, mistakes):
        ax.imshow(load_image(mistake.index))
        ax.set_title(
            f"true: {mistake.true}\npredicted: {mistake.predicted} ({mistake.score:.2f})", fontsize=10, color="#b00020"
        )
    fig.suptitle(f"Most confident mistakes\n{len(mistakes)} shown, of {num_samples} images", fontsize=11)
    fig.savefig(path, dpi=100)
    return Path(path)
