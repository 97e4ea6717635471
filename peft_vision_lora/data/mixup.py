"""Mixup and CutMix as a collate function, seeded so a batch mixes the same way in any worker and after a resume."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class MixupCutmix:
    """Collate ``{"pixel_values", "labels"}`` examples into a batch and mix it (timm's batch mode).

    Each batch gets Mixup (with probability ``1 - switch_prob``) or CutMix, with ``prob``; images are mixed with the
    batch in reverse order, and ``labels`` become soft targets of shape ``(batch, num_classes)`` (float32, with
    ``label_smoothing``). Train with a soft-target loss: ``torch.nn.functional.cross_entropy(logits, labels)``
    (a model's built-in loss would treat float labels as multi-label).

    The random draws of a batch are keyed by ``(seed, epoch, a checksum of the batch)``: the collate function runs in
    DataLoader workers, and a resumed run skips batches without collating them, so a call counter would not be
    reproducible, while the batch content (itself deterministic with seeded transforms) is. Call :meth:`set_epoch`
    each epoch. ``uint8`` pixel values are supported; Mixup then rounds the blend back to uint8.
    """

    num_classes: int = field(metadata={"help": "Number of classes (width of the soft labels)."})
    mixup_alpha: float = field(default=0.8, metadata={"help": "Beta(alpha, alpha) for Mixup; 0 disables Mixup."})
    cutmix_alpha: float = field(default=1.0, metadata={"help": "Beta(alpha, alpha) for CutMix; 0 disables CutMix."})
    prob: float = field(default=1.0, metadata={"help": "Probability that a batch is mixed at all."})
    switch_prob: float = field(default=0.5, metadata={"help": "Probability of CutMix when both are enabled."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing of the soft targets."})
    seed: int = field(default=0, metadata={"help": "Seed of the mixing draws."})

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {self.mixup_alpha}, {self.cutmix_alpha}")
        for name in ("prob", "switch_prob", "label_smoothing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        # Shared memory, so that set_epoch in the main process reaches persistent DataLoader workers.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        pixel_values = torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples])
        labels = torch.as_tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        return self.mix(pixel_values, labels)

    def mix(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mix a collated batch (``pixel_values`` ``(B, C, H, W)``, integer ``labels`` ``(B,)``)."""
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(f"labels {bad.tolist()[:5]} are outside 0..{self.num_classes - 1}")
        rng = np.random.default_rng([self.seed, int(self._epoch), _checksum(pixel_values, labels)])
        off = self.label_smoothing / self.num_classes
        targets = torch.full((len(labels), self.num_classes), off, dtype=torch.float32)
        targets.scatter_(1, labels[:, None], 1.0 - self.label_smoothing + off)
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        if alpha == 0 or rng.random() >= self.prob:
            return {"pixel_values": pixel_values, "labels": targets}
        lam = float(rng.beta(alpha, alpha))
        flipped = pixel_values.flip(0)
        if use_cutmix:
            height, width = pixel_values.shape[-2:]
            cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
            cy, cx = int(rng.integers(height)), int(rng.integers(width))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
            mixed = pixel_values.clone()
            mixed[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)  # the area actually pasted
        else:
            blend = pixel_values.float() * lam + flipped.float() * (1.0 - lam)
            mixed = blend.round_().to(pixel_values.dtype) if not pixel_values.is_floating_point() else blend
        return {"pixel_values": mixed, "labels": targets * lam + targets.flip(0) * (1.0 - lam)}


def _checksum(pixel_values: torch.Tensor, labels: torch.Tensor) -> int:
    # A strided sample of the pixels is enough to tell batches apart and costs microseconds.
    sample = pixel_values[..., ::16, ::16].contiguous().cpu().numpy().tobytes()
    return zlib.crc32(labels.cpu().numpy().tobytes() + sample)
