"""``config.json`` of an adapter folder: the labels, the backbone it adapts and where to find that backbone.

Its own ``model_type`` lets stock ``AutoModelForImageClassification.from_pretrained(folder)`` and
``pipeline("image-classification", model=folder)`` dispatch to :class:`VisionLoraForImageClassification` (registered on
``import peft_vision_lora``), which loads the backbone named here and applies the adapter stored next to it.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig


class VisionLoraConfig(PretrainedConfig):
    """Labels plus the backbone config (``backbone_config``) and location (``base_model_name_or_path``)."""

    model_type = "peft_vision_lora"

    def __init__(
        self,
        base_model_name_or_path: str | None = None,
        backbone_config: dict[str, Any] | None = None,
        preset: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.base_model_name_or_path = base_model_name_or_path
        self.backbone_config = backbone_config or {}
        self.preset = preset
        super().__init__(**kwargs)

    @classmethod
    def from_backbone(
        cls, config: PretrainedConfig, base_model_name_or_path: str, preset: str | None
    ) -> VisionLoraConfig:
        backbone = config.to_dict()
        return cls(
            base_model_name_or_path=base_model_name_or_path,
            backbone_config=backbone,
            preset=preset,
            id2label=dict(config.id2label),
            label2id=dict(config.label2id),
        )

    def get_backbone_config(self) -> PretrainedConfig:
        """The classification model's config (backbone geometry and labels)."""
        backbone = dict(self.backbone_config)
        model_type = backbone.pop("model_type", None)
        if model_type is None:
            raise ValueError("config.json of this adapter has no backbone_config.model_type.")
        return AutoConfig.for_model(model_type, **backbone)
