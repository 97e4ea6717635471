"""The model a run trains: LoRA adapters, full fine-tuning or a linear probe, and how it is called."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import AutoConfig, CLIPConfig, PreTrainedModel

from ..architectures import get_architecture
from ..modeling import build_model, load_classifier
from .arguments import ModelArguments


def load_plain_classifier(base: str | os.PathLike, labels: Sequence[str]) -> PreTrainedModel:
    """The classification model of ``base`` with a fresh head over ``labels`` (no adapters)."""
    config = AutoConfig.from_pretrained(os.fspath(base))
    if config.model_type == "clip_vision_model":  # CLIPForImageClassification is built from a full CLIPConfig
        config = CLIPConfig(vision_config=config.to_dict())
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.num_labels = len(labels)
    model = load_classifier(base, config)
    model.name_or_path = os.fspath(base)
    return model


def head_module(model: nn.Module) -> nn.Module:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return getattr(base, get_architecture(base).head)


def build_classifier(
    args: ModelArguments, base: str | os.PathLike, labels: Sequence[str], *, image_size: int | None = None
) -> nn.Module:
    """The model of ``args.method`` with a head over ``labels``, its trainable parameters set.

    Full fine-tuning and linear probing save the whole model, so it is built for ``image_size`` right away (see
    :func:`resize_position_embeddings`); a LoRA model keeps its base as is and interpolates at every forward.
    """
    if args.method == "lora":
        return build_model(
            base,
            labels,
            preset=args.preset,
            r=args.r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            normalization=args.normalization,
            use_dora=args.use_dora,
        )
    model = load_plain_classifier(base, labels)
    if image_size:
        model = resize_position_embeddings(model, image_size)
    if args.method == "linear":
        model.requires_grad_(False)
        head_module(model).requires_grad_(True)
    return model


def resize_position_embeddings(model: PreTrainedModel, image_size: int) -> PreTrainedModel:
    """``model`` rebuilt for square inputs of ``image_size``: position embeddings resampled once, exactly as
    ``interpolate_pos_encoding=True`` resamples them at every forward, and ``image_size`` set in its config.

    A saved copy then runs at that size anywhere, pipelines included (they pass no ``interpolate_pos_encoding``).
    DINOv2 interpolates by itself and is returned unchanged, as is a model already at ``image_size``.
    """
    if get_architecture(model).model_type == "dinov2" or native_image_size(model) == image_size:
        return model
    embeddings = next(m for m in model.modules() if callable(getattr(m, "interpolate_pos_encoding", None)))
    # ViT keeps a (1, positions, dim) Parameter, CLIP an Embedding(positions, dim).
    table = getattr(embeddings, "position_embeddings", None)
    table = embeddings.position_embedding.weight if table is None else table
    config = copy.deepcopy(model.config)
    vision = getattr(config, "vision_config", None) or config
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


def native_image_size(model: nn.Module) -> int:
    config = model.config
    return int((getattr(config, "vision_config", None) or config).image_size)


def forward_kwargs(model: nn.Module, image_size: int) -> dict[str, Any]:
    """Extra forward arguments for inputs of ``image_size``: position embedding interpolation when it is not the
    checkpoint's size (DINOv2 always interpolates and takes no such argument)."""
    if image_size == native_image_size(model) or get_architecture(model).model_type == "dinov2":
        return {}
    return {"interpolate_pos_encoding": True}


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant checkpointing: unlike the reentrant kind it backpropagates into LoRA weights even though the
    inputs of each checkpointed block (outputs of frozen embeddings) do not require gradients."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2 name; the old one is deprecated
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
