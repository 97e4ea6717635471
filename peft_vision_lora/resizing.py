"""Rebuild a model for another input size, so a saved copy runs at that size everywhere (pipelines included)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .architectures import get_architecture


def vision_config(config: PretrainedConfig) -> PretrainedConfig:
    """The part of ``config`` that describes the image encoder (CLIP nests it)."""
    return getattr(config, "vision_config", None) or config


def native_image_size(model_or_config: nn.Module | PretrainedConfig) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return int(vision_config(config).image_size)


def resize_position_embeddings(model: PreTrainedModel, image_size: int) -> PreTrainedModel:
    """``model`` rebuilt for square inputs of ``image_size``.

    Position embeddings are resampled once, exactly as ``interpolate_pos_encoding=True`` resamples them at every
    forward, and ``image_size`` is set in the config. Pipelines pass no ``interpolate_pos_encoding``, so this is what
    makes a model trained at another size usable there. DINOv2 interpolates by itself and is returned unchanged,
    as is a model already at ``image_size``.
    """
    if get_architecture(model).model_type == "dinov2" or native_image_size(model) == image_size:
        return model
    embeddings = next(m for m in model.modules() if callable(getattr(m, "interpolate_pos_encoding", None)))
    # ViT keeps a (1, positions, dim) Parameter, CLIP an Embedding(positions, dim).
    table = getattr(embeddings, "position_embeddings", None)
    table = embeddings.position_embedding.weight if table is None else table
    config = copy.deepcopy(model.config)
    vision = vision_config(config)
    if image_size % vision.patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {vision.patch_size}.")
    grid = image_size // vision.patch_size
    with torch.no_grad():
        tokens = torch.zeros(1, grid * grid + 1, vision.hidden_size, dtype=table.dtype)
        resized = embeddings.interpolate_pos_encoding(tokens, image_size, image_size)
    state = model.state_dict()
    name = next(n for n, p in model.named_parameters() if p is table)
    state[name] = resized.reshape(-1, *table.shape[1:]) if table.ndim == 2 else resized
    vision.image_size = image_size
    resized_model = type(model)(config)
    resized_model.load_state_dict(state)
    resized_model.name_or_path = model.name_or_path
    return resized_model
