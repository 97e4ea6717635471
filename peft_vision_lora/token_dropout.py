"""Token (patch) dropout: train on a random subset of each image's patch tokens.

The cost of every encoder layer grows with the number of tokens, and a frozen pretrained backbone still
recognises an image from part of its patches (as in masked-image pretraining and FLIP), so training on half the
patches halves the step's cost for a small loss in what each step learns. The subset is taken right after the
position embeddings are added, so each kept token still knows where it came from; the class token is always kept.
Evaluation and inference (any module in eval mode) see every token.

The draw is keyed by ``(seed, batch number)`` over the *global* batch, and each process takes its rows, so a run
gives the same result on any number of processes and resumes exactly without saving any random state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .architectures import embeddings_module


class TokenDropout:
    """Keeps ``keep`` of the patch tokens of each training image, by a forward hook on the model's embeddings.

    Call :meth:`set_batch` before each training forward (batch number and this process's rows of the global batch);
    :meth:`remove` takes the hook off.
    """

    def __init__(self, model: nn.Module, keep: float, *, seed: int = 0, min_tokens: int = 1) -> None:
        if not 0 < keep <= 1:
            raise ValueError(f"--token_keep must be in (0, 1], got {keep}.")
        if min_tokens < 1:
            raise ValueError(f"--token_keep_min must be >= 1, got {min_tokens}.")
        self.keep, self.seed, self.min_tokens = keep, seed, min_tokens
        self._batch, self._rows, self._global_rows = 0, None, None
        self._handle: RemovableHandle | None = embeddings_module(model).register_forward_hook(self._hook)

    def set_batch(self, batch: int, rows: slice | None = None, global_rows: int | None = None) -> None:
        """The next forward is of batch number ``batch``; this process holds ``rows`` of ``global_rows``."""
        self._batch, self._rows, self._global_rows = batch, rows, global_rows

    def kept_tokens(self, num_patches: int) -> int:
        """Patches kept of ``num_patches``: ``keep`` of them, but never fewer than ``min_tokens`` (small images,
        whose few tokens are cheap and each carry much of the image, keep them all)."""
        return min(num_patches, max(self.min_tokens, round(self.keep * num_patches)))

    def _hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training or self.keep >= 1:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        batch, tokens, dim = hidden.shape
        keep = self.kept_tokens(tokens - 1)
        if keep == tokens - 1:
            return None
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._batch)
        noise = torch.rand(self._global_rows or batch, tokens - 1, generator=generator)
        if self._rows is not None:
            noise = noise[self._rows]
        if len(noise) != batch:
            raise RuntimeError(f"Token dropout drew {len(noise)} rows for a batch of {batch}: call set_batch first.")
        index = noise.argsort(dim=1)[:, :keep].to(hidden.device) + 1  # patch positions; 0 is the class token
        patches = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, dim))
        kept = torch.cat([hidden[:, :1], patches], dim=1)
        return (kept, *output[1:]) if isinstance(output, tuple) else kept

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
