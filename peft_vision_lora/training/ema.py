"""Exponential moving average of the trainable weights (LoRA factors and head).

Averaging the weights of the last few hundred steps smooths out the noise of small batches, which matters most in
the short, high-learning-rate runs that small datasets get. The average is what evaluation sees and what the run
saves; the raw weights keep training. Only trainable parameters are tracked, so it costs a copy of the adapter,
not of the backbone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .parts import LoopPart


class EMA(LoopPart):
    """``shadow = decay * shadow + (1 - decay) * weights`` after every optimizer step, with the usual warmup
    ``decay_t = min(decay, (1 + t) / (10 + t))`` so that early steps are not dominated by the initial weights."""

    name = "ema"

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"--ema_decay must be in (0, 1) to average, got {decay}.")
        self.decay = decay
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().clone() for name, p in self.params.items()}

    def recipe(self) -> str:
        return f"EMA {self.decay:g}"

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Fold in the weights after optimizer step ``step`` (1-based)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.shadow.values()), list(self.params.values()), 1 - decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the model for the duration of the block, the raw ones back afterwards."""
        raw = {name: p.detach().clone() for name, p in self.params.items()}
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(raw[name])

    def finish(self) -> None:
        """From here on the model holds the averaged weights: evaluated and saved as such."""
        self.copy_to_model()
        self.params.clear()  # nothing left to swap in: the model is the average
        self.shadow.clear()

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for name, p in self.params.items():
            p.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        if set(tensors) != set(self.shadow):
            raise ValueError("The checkpoint's EMA weights do not match the trainable parameters of this run.")
        for name, tensor in tensors.items():
            self.shadow[name].copy_(tensor)
