"""What ``import peft_vision_lora`` registers with PEFT and transformers.

- PEFT: a LoRA target mapping per ``model_type`` (the ``qkv`` preset as a regex that covers transformers 4.x and
  5.x names and, for CLIP, only the vision tower), so ``get_peft_model(model, LoraConfig(r=8))`` needs no
  ``target_modules``; and LoRA ``target_modules`` written for transformers 4.x names (``["query", "value"]``) select
  the same projections under their 5.x names on those families (:mod:`.legacy_targets`).
- transformers: the adapter folder's ``config.json`` type, so stock ``AutoModelForImageClassification`` and
  ``pipeline("image-classification")`` load adapter folders; the same for folders saved by stock PEFT
  (``adapter_config.json`` + weights only) whose weights carry the head; and the ``vision-efficient-tuning`` alias.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from peft import LoraModel, PeftModel
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel
from transformers.pipelines import PIPELINE_REGISTRY, ImageClassificationPipeline

from .architectures import ARCHITECTURES, DEFAULT_PRESET, PRESETS
from .configuration import VisionLoraConfig
from .legacy_targets import legacy_weight_mapping, translate_legacy_targets

PIPELINE_ALIAS = "vision-efficient-tuning"
PROCESSOR_FILE = "preprocessor_config.json"
logger = logging.getLogger(__name__)


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

        return _with_dtype(load_model(pretrained_model_name_or_path, merge=True), kwargs)


def _with_dtype(model: PreTrainedModel, kwargs: Mapping[str, Any]) -> PreTrainedModel:
    """The ``dtype`` (or ``torch_dtype``) a ``from_pretrained`` caller asked for."""
    dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
    return model.to(dtype) if dtype not in (None, "auto") else model


def _relabel(model: PreTrainedModel, id2label: Mapping[Any, str], folder: str | os.PathLike) -> None:
    labels = [id2label[i] for i in sorted(id2label, key=int)]
    if len(labels) != model.config.num_labels:
        raise ValueError(
            f"id2label names {len(labels)} classes but the head saved in {os.fspath(folder)} has "
            f"{model.config.num_labels} outputs."
        )
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}


def _open_stock_folders(from_pretrained):
    # A folder saved by stock PEFT has no config.json, so transformers builds the base's own head and cannot load a
    # saved head of another size. For supported families, load it the way our folders load (merged, head size read
    # off the weights); labels are the caller's id2label (a pipeline's model_kwargs) or LABEL_<i>.
    def _from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        from .adapters import load_model, stock_classifier_base  # adapters imports this module indirectly

        base = stock_classifier_base(pretrained_model_name_or_path) if cls is AutoModelForImageClassification else None
        if base is None:
            return from_pretrained.__func__(cls, pretrained_model_name_or_path, *args, **kwargs)
        if "_from_pipeline" in kwargs and os.path.isdir(base) and not os.path.isfile(f"{base}/{PROCESSOR_FILE}"):
            logger.warning(
                "%s is a stock PEFT folder whose base %s has no %s: pipeline(...) needs "
                "image_processor=peft_vision_lora.load_image_processor(%r). Folders written by "
                "peft_vision_lora.save_pretrained carry their labels and processor.",
                os.fspath(pretrained_model_name_or_path),
                base,
                PROCESSOR_FILE,
                base,
            )
        classifier = load_model(pretrained_model_name_or_path, merge=True)
        config, id2label = kwargs.get("config"), kwargs.get("id2label")
        if id2label is None and config is not None and config.num_labels == classifier.config.num_labels:
            id2label = config.id2label
        if id2label is not None:
            _relabel(classifier, id2label, pretrained_model_name_or_path)
        return _with_dtype(classifier, kwargs)

    _from_pretrained.vision_lora = True
    return classmethod(_from_pretrained)


def _translate_then_prepare(prepare_model):
    # LoraModel._prepare_model is PEFT's one step that sees both the prepared config and the model, right before
    # target_modules are matched: every path (get_peft_model, PeftModel.from_pretrained, add_adapter) passes it.
    def _prepare_model(self: LoraModel, peft_config, model) -> None:
        translate_legacy_targets(peft_config, model)
        prepare_model(self, peft_config, model)

    _prepare_model.vision_lora = True
    return _prepare_model


def _load_with_legacy_names(load_adapter):
    # PeftModel.from_pretrained injects the adapter (translating 4.x targets above) before it reads the weights, which
    # an adapter saved on 4.x stores under the old module paths: rename those the same way.
    def _load_adapter(self: PeftModel, model_id, adapter_name: str, *args, key_mapping=None, **kwargs):
        if not key_mapping and adapter_name in self.peft_config:  # from_pretrained passes {} for "none"
            key_mapping = legacy_weight_mapping(self.peft_config[adapter_name])
        return load_adapter(self, model_id, adapter_name, *args, key_mapping=key_mapping, **kwargs)

    _load_adapter.vision_lora = True
    return _load_adapter


def register() -> None:
    """Idempotent: safe to call more than once."""
    targets = {arch.model_type: arch.role_regex(PRESETS[DEFAULT_PRESET]) for arch in ARCHITECTURES.values()}
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.update(targets)
    if not getattr(LoraModel._prepare_model, "vision_lora", False):
        LoraModel._prepare_model = _translate_then_prepare(LoraModel._prepare_model)
        PeftModel.load_adapter = _load_with_legacy_names(PeftModel.load_adapter)
    if not getattr(AutoModelForImageClassification.from_pretrained, "vision_lora", False):
        AutoModelForImageClassification.from_pretrained = _open_stock_folders(
            AutoModelForImageClassification.from_pretrained
        )
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
