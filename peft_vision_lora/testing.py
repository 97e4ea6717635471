"""The tiny random ViT of the test suite and of the benchmarks' ``--quick`` smoke runs: one definition for both.

Two layers of width 32 on 32 px images in 8 px patches: it builds and runs in milliseconds on a CPU, and a few
epochs on colour-coded images teach it (the training tests and ``time_to_accuracy.py --quick`` rely on that).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import ViTConfig, ViTForImageClassification

# Also the geometry of the other families' tiny test checkpoints (DINOv2, CLIP vision).
TINY_VIT: dict[str, int] = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
)


def tiny_vit_config(**overrides: Any) -> ViTConfig:
    """The tiny ViT's config; ``overrides`` change any field (``image_size=48``, ``num_labels=3``, ...)."""
    return ViTConfig(**{**TINY_VIT, **overrides})


def make_tiny_vit(folder: str | os.PathLike, seed: int = 0, **overrides: Any) -> Path:
    """Save a randomly initialised (``seed``) tiny ``ViTForImageClassification`` to ``folder``; returns ``folder``."""
    torch.manual_seed(seed)
    ViTForImageClassification(tiny_vit_config(**overrides)).save_pretrained(folder)
    return Path(folder)
