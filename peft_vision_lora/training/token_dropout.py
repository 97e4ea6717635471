"""Token dropout in the loop: which global batch each training forward belongs to, and the recipe's words for it.

The dropout itself (a forward hook on the embeddings) is :class:`peft_vision_lora.token_dropout.TokenDropout`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..processing import vision_config
from ..token_dropout import TokenDropout
from .parts import LoopPart


class TokenDropoutPart(LoopPart):
    """Keys each training forward's draw by the global batch number and this process's rows of that batch."""

    name = "token_dropout"

    def __init__(
        self, model: nn.Module, keep: float, *, min_tokens: int, seed: int, image_size: int, rank: int, world_size: int
    ) -> None:
        self.dropout = TokenDropout(model, keep, seed=seed, min_tokens=min_tokens)
        self.rank, self.world_size = rank, world_size
        self.patches = (image_size // vision_config(model.config).patch_size) ** 2

    def recipe(self) -> str:
        kept, patches = self.dropout.kept_tokens(self.patches), self.patches
        if kept < patches:
            return f"token keep {self.dropout.keep:g} ({kept} of {patches} patches)"
        return f"every token ({patches} patches, within --token_keep_min {self.dropout.min_tokens})"

    def drops_tokens(self) -> bool:
        """Whether training images lose tokens (small images keep all of theirs, within ``--token_keep_min``)."""
        return self.dropout.keep < 1 and self.dropout.kept_tokens(self.patches) < self.patches

    def keep_every_token(self) -> None:
        """From the next step on, train on every token (a time budget with many epochs to spare asks for it)."""
        self.dropout.keep = 1.0

    def before_forward(self, batch: dict[str, torch.Tensor], batch_number: int) -> None:
        rows = len(batch["labels"])
        first = self.rank * rows
        self.dropout.set_batch(batch_number, slice(first, first + rows), rows * self.world_size)

    def finish(self) -> None:
        self.dropout.remove()
