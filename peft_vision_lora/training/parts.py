"""The optional parts of a run (token dropout, EMA, LP-FT, progressive resolution) behind one small interface.

The loop calls every hook of :class:`LoopParts` at its place and knows no part by name; an option that is off is
simply not in the list. Each hook does nothing by default, so a part overrides only the hooks it needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


class LoopPart:
    """One optional part of the training loop; every hook does nothing unless overridden.

    ``name`` keys the part's checkpoint file (``<name>.safetensors``) when :meth:`state_dict` returns tensors.
    """

    name: str = "part"

    def recipe(self) -> str | None:
        """The part's entry in the run's one-line recipe (None: nothing to say)."""
        return None

    def begin(self, resumed: bool) -> None:
        """Before the first step (``resumed``: the run continues from a checkpoint)."""

    def begin_epoch(self, epoch: int) -> None:
        """Before the first batch of ``epoch``."""

    def forward_kwargs(self) -> dict[str, Any]:
        """Extra arguments of the training forward."""
        return {}

    def before_forward(self, batch: dict[str, torch.Tensor], batch_number: int) -> None:
        """Before the training forward of this process's part of global batch ``batch_number``."""

    def after_step(self, step: int) -> None:
        """After optimizer step ``step`` (1-based)."""

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The weights to evaluate and keep as the best, for the duration of the block."""
        yield

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """Tensors a checkpoint must hold to resume this part exactly (None: nothing)."""
        return None

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def finish(self) -> None:
        """After the last step, before the final evaluation and the saved model."""


class LoopParts(LoopPart):
    """The parts of one run, called in order (and in reverse order for the evaluation context)."""

    def __init__(self, parts: list[LoopPart]) -> None:
        self.parts = parts

    def recipe(self) -> str | None:
        return ", ".join(filter(None, (part.recipe() for part in self.parts))) or None

    def begin(self, resumed: bool) -> None:
        for part in self.parts:
            part.begin(resumed)

    def begin_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.begin_epoch(epoch)

    def forward_kwargs(self) -> dict[str, Any]:
        return {key: value for part in self.parts for key, value in part.forward_kwargs().items()}

    def before_forward(self, batch: dict[str, torch.Tensor], batch_number: int) -> None:
        for part in self.parts:
            part.before_forward(batch, batch_number)

    def after_step(self, step: int) -> None:
        for part in self.parts:
            part.after_step(step)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.swapped_in())
            yield

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Each part's checkpoint tensors, by part name (parts without state left out)."""
        states = ((part.name, part.state_dict()) for part in self.parts)
        return {name: state for name, state in states if state is not None}

    def stateful(self) -> list[LoopPart]:
        """The parts whose state a checkpoint holds."""
        return [part for part in self.parts if part.state_dict() is not None]

    def finish(self) -> None:
        for part in self.parts:
            part.finish()
