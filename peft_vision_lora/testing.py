"""The tiny random models of the test suite and of the benchmarks' ``--quick`` smoke runs: one definition for both.

Two layers of width 32 on 32 px images in 8 px patches: it builds and runs in milliseconds on a CPU, and a few
epochs on colour-coded images teach it (the training tests and ``time_to_accuracy.py --quick`` rely on that).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

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


TINY = TINY_VIT  # every family's tiny checkpoint has the tiny ViT's geometry
TINY_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99)

# name -> factory of a randomly initialised model; covers every class the architecture table promises.
TINY_MODELS = {
    "vit": lambda: ViTForImageClassification(tiny_vit_config()),
    "vit-backbone": lambda: ViTModel(tiny_vit_config()),
    "dinov2": lambda: Dinov2ForImageClassification(Dinov2Config(**TINY)),
    "dinov2-backbone": lambda: Dinov2Model(Dinov2Config(**TINY)),
    "clip": lambda: CLIPModel(CLIPConfig(text_config=TINY_TEXT, vision_config=TINY)),
    "clip-vision": lambda: CLIPVisionModel(CLIPVisionConfig(**TINY)),
    "clip-vision-projection": lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY, projection_dim=16)),
}


def make_tiny(name: str, folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save a randomly initialised (``seed``) tiny checkpoint of ``TINY_MODELS[name]`` to ``folder``."""
    torch.manual_seed(seed)
    model = TINY_MODELS[name]()
    model.save_pretrained(folder)
    return Path(folder)
