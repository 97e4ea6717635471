"""Progressive resolution: the first stages of a run train at smaller sizes, the last at the model's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .model import forward_kwargs
from .parts import LoopPart


def check_schedule(schedule: Sequence[int], image_size: int, *, explicit: bool) -> None:
    """The schedule must end at the run's image size (``explicit``: that size came from ``--image_size``)."""
    if schedule and schedule[-1] != image_size:
        source = "--image_size" if explicit else "the checkpoint's; --image_size changes it"
        raise ValueError(
            f"--resolution_schedule must end at the target size {image_size} ({source}), got {list(schedule)}."
        )


class ResolutionSchedule(LoopPart):
    """Train at ``schedule[i]`` px in the i-th of equal stages of the run's epochs; evaluation is always at the last."""

    name = "resolution"

    def __init__(self, schedule: Sequence[int], model: nn.Module, train_data: Any, num_epochs: int) -> None:
        self.schedule, self.model, self.train_data, self.num_epochs = list(schedule), model, train_data, num_epochs
        self.kwargs: dict[str, Any] = {}

    def begin_epoch(self, epoch: int) -> None:
        size = self.schedule[min(len(self.schedule) - 1, epoch * len(self.schedule) // self.num_epochs)]
        self.train_data.set_size(size)
        self.kwargs.clear()  # kept as one dict: the interpolation flag of this stage
        self.kwargs.update(forward_kwargs(self.model, size))

    def forward_kwargs(self) -> dict[str, Any]:
        return self.kwargs
