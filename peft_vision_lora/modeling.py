"""Build LoRA image classifiers on ViT, CLIP vision and DINOv2 backbones: the model, its head and its LoRA targets."""

from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    CLIPConfig,
    CLIPForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import logging as hf_logging

from .architectures import (
    DEFAULT_LORA_ALPHA,
    DEFAULT_LORA_DROPOUT,
    DEFAULT_PRESET,
    DEFAULT_R,
    get_architecture,
    resolve_target_modules,
)
from .io import looks_like_path
from .processing import (
    default_image_processor,
    load_image_processor,
    native_image_size,
    resize_position_embeddings,
    vision_config,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------- building


def _check_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(label) for label in labels]
    if len(labels) < 2:
        raise ValueError(f"Need at least 2 class labels for classification, got {labels!r}.")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"Class labels must be unique; duplicated: {duplicates}.")
    if any(not label.strip() for label in labels):
        raise ValueError(f"Class labels must be non-empty strings, got {labels!r}.")
    return labels


def check_base_exists(base: str | os.PathLike) -> str:
    base = os.fspath(base)
    if not os.path.isdir(base) and (looks_like_path(base) or os.path.exists(base)):
        raise FileNotFoundError(f"Base model path {base!r} does not exist or is not a model folder.")
    return base


def classification_config(config: PretrainedConfig, labels: Sequence[str]) -> PretrainedConfig:
    """``config`` as the config of a classification model over ``labels``."""
    if config.model_type == "clip_vision_model":
        # CLIPForImageClassification reads ``vision_config``; its unused text tower config stays at defaults.
        config = CLIPConfig(vision_config=config.to_dict())
    config = config.__class__.from_dict(config.to_dict())
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.num_labels = len(labels)
    return config


def _classification_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    if config.model_type == "clip":
        return CLIPForImageClassification
    return AutoModelForImageClassification


def load_classifier(
    base: str | os.PathLike, config: PretrainedConfig, *, image_size: int | None = None, **kwargs: Any
) -> PreTrainedModel:
    """A classification model with the backbone weights of ``base`` and the head described by ``config``.

    The weights load at the base's own input size; the model is then rebuilt for ``image_size`` (default: the size
    ``config`` records) with resampled position embeddings. A fresh (or resized) head is expected and not reported;
    any *backbone* weight missing from ``base`` is, and a backbone weight of the wrong shape is an error.
    """
    base_config = AutoConfig.from_pretrained(os.fspath(base))
    arch = get_architecture(base_config)
    image_size = image_size or native_image_size(config)
    config = copy.deepcopy(config)
    vision_config(config).image_size = native_image_size(base_config)
    if arch.checkpoint_key_mapping:
        kwargs.setdefault("key_mapping", dict(arch.checkpoint_key_mapping))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is new by design: silence transformers' load report for it
    try:
        model, info = _classification_class(config).from_pretrained(
            os.fspath(base), config=config, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    head = re.compile(rf"(^|\.){arch.head}\.")
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])]
    mismatched = [k for k in mismatched if not head.search(k)]
    if mismatched:
        raise ValueError(f"Backbone weights of {base} do not fit the model's config: {sorted(mismatched)[:10]}.")
    missing = [k for k in info.get("missing_keys", []) if not head.search(k)]
    if missing:
        logger.warning("Backbone weights not found in %s, initialised randomly: %s", base, sorted(missing)[:10])
    model.name_or_path = os.fspath(base)
    return resize_position_embeddings(model, image_size)


def build_classifier(
    base: str | os.PathLike, labels: Sequence[str], *, image_size: int | None = None
) -> PreTrainedModel:
    """The plain classification model of ``base`` with a fresh head over ``labels``: the full fine-tuning and
    linear-probe baselines, and the model :func:`build_model` wraps with LoRA."""
    labels = _check_labels(labels)
    base = check_base_exists(base)
    config = classification_config(AutoConfig.from_pretrained(base), labels)
    return load_classifier(base, config, image_size=image_size)


def build_model(
    base: str | os.PathLike | PreTrainedModel,
    labels: Sequence[str],
    *,
    preset: str = DEFAULT_PRESET,
    r: int = DEFAULT_R,
    lora_alpha: int = DEFAULT_LORA_ALPHA,
    lora_dropout: float = DEFAULT_LORA_DROPOUT,
    normalization: str | None = None,
    image_size: int | None = None,
    lora_layers: int | None = None,
    image_processor: BaseImageProcessor | None = None,
    **lora_kwargs: Any,
) -> PeftModel:
    """A LoRA image classifier: frozen backbone of ``base``, LoRA on the ``preset`` projections, a fresh trainable head.

    ``base`` is a local folder, a Hub id or a model instance of a supported family (classification model, bare
    backbone, or a full ``CLIPModel`` used as a vision backbone). Extra keyword arguments (``use_dora``,
    ``use_rslora``, ``init_lora_weights``, ...) go to ``peft.LoraConfig``. ``normalization`` overrides the image
    mean/std saved with the adapter (``imagenet``, ``inception``, ``clip``); ``image_size`` builds the model for
    another input size (position embeddings resampled; recorded in the adapter so every loader rebuilds it).
    ``lora_layers`` adapts only the last N encoder layers (the adapter lists their modules by name).
    ``image_processor`` is saved with the adapter as given; by default the base's own (or its family's defaults),
    with ``image_size`` and ``normalization`` applied.
    """
    labels = _check_labels(labels)
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(base, torch.nn.Module):
            get_architecture(base)  # fail before writing anything
            base_name = getattr(base, "name_or_path", "") or ""
            base.save_pretrained(tmp)  # one loading path for instances and folders: transformers' own loader
            source = tmp
        else:
            source = base_name = check_base_exists(base)
        model = build_classifier(source, labels, image_size=image_size)
        model.name_or_path = base_name or source
        if image_processor is not None:
            processor = image_processor
        elif source != tmp:
            processor = load_image_processor(source, normalization=normalization, image_size=image_size)
        else:
            processor = default_image_processor(model.config, normalization=normalization, image_size=image_size)
    lora_config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=resolve_target_modules(model, preset, last_layers=lora_layers),
        modules_to_save=[get_architecture(model).head],
        **lora_kwargs,
    )
    peft_model = get_peft_model(model, lora_config)
    peft_model.peft_config["default"].base_model_name_or_path = model.name_or_path
    # Kept on the model so save_pretrained writes the preprocessing this model was built with.
    peft_model.vision_lora_preset = preset
    peft_model.vision_lora_image_processor = processor
    return peft_model
