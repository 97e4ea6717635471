"""What ``import peft_vision_lora`` registers with PEFT and transformers.

- PEFT: a LoRA target mapping per ``model_type`` (the ``qkv`` preset as a regex that covers transformers 4.x and
  5.x names and, for CLIP, only the vision tower), so ``get_peft_model(model, LoraConfig(r=8))`` needs no
  ``target_modules``.
- transformers: the adapter folder's ``config.json`` type, so stock ``AutoModelForImageClassification`` and
  ``pipeline("image-classification")`` load adapter folders; and the ``vision-efficient-tuning`` task alias.
"""

from __future__ import annotations

import os
from typing import Any

from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel
from transformers.pipelines import PIPELINE_REGISTRY, ImageClassificationPipeline

from .architectures import ARCHITECTURES, DEFAULT_PRESET, PRESETS
from .configuration import VisionLoraConfig

PIPELINE_ALIAS = "vision-efficient-tuning"


class VisionLoraForImageClassification(PreTrainedModel):
    """Dispatch target of ``AutoModelForImageClassification`` for adapter folders.

    It is never instantiated: ``from_pretrained`` loads the backbone named in the folder's ``config.json``, applies
    the adapter and returns the backbone's own classification model with the LoRA weights merged in, so pipelines
    and downstream code get a regular ``ViTForImageClassification`` / ... that runs at the base model's speed.
    Use ``peft.PeftModel.from_pretrained`` or :func:`peft_vision_lora.load_model` to keep the adapter separate.
    """

    config_class = VisionLoraConfig

    def __init__(self, config: VisionLoraConfig, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "VisionLoraForImageClassification only loads saved adapters: use "
            "AutoModelForImageClassification.from_pretrained(folder) or peft_vision_lora.load_model(folder)."
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        from .adapters import load_model  # adapters imports this module's registrations indirectly

        classifier = load_model(pretrained_model_name_or_path, merge=True)
        dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
        if dtype not in (None, "auto"):
            classifier.to(dtype)
        return classifier


def register() -> None:
    """Idempotent: safe to call more than once."""
    targets = {arch.model_type: arch.role_regex(PRESETS[DEFAULT_PRESET]) for arch in ARCHITECTURES.values()}
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.update(targets)
    try:
        AutoConfig.register(VisionLoraConfig.model_type, VisionLoraConfig)
        AutoModelForImageClassification.register(VisionLoraConfig, VisionLoraForImageClassification)
    except ValueError:
        pass  # already registered
    if PIPELINE_ALIAS not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            PIPELINE_ALIAS,
            pipeline_class=ImageClassificationPipeline,
            pt_model=AutoModelForImageClassification,
            type="image",
        )
