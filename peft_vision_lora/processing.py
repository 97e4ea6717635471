"""Image processors: the model's own when it ships one, else one built from the architecture table (timm style)."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoConfig, AutoImageProcessor, PretrainedConfig
from transformers.image_processing_utils import BaseImageProcessor

from .architectures import get_architecture
from .preprocessing import NORMALIZATIONS

try:  # transformers 5 splits processors by backend; the PIL one needs no torchvision
    from transformers import CLIPImageProcessorPil as ShortSideCropProcessor
except ImportError:
    from transformers import CLIPImageProcessor as ShortSideCropProcessor

PROCESSOR_FILE = "preprocessor_config.json"


def _has_local_processor(path: str | os.PathLike) -> bool:
    return (Path(path) / PROCESSOR_FILE).is_file()


def default_image_processor(
    config: PretrainedConfig, *, image_size: int | None = None, normalization: str | None = None
) -> BaseImageProcessor:
    """The eval preprocessing of the architecture table: resize the short side to size/crop_pct, center crop."""
    defaults = get_architecture(config).processor
    size = image_size or _config_image_size(config) or defaults.size[0]
    mean, std = NORMALIZATIONS[normalization] if normalization else (defaults.mean, defaults.std)
    return ShortSideCropProcessor(
        size={"shortest_edge": int(round(size / (defaults.crop_pct or 1.0)))},
        crop_size={"height": size, "width": size},
        resample=defaults.resample,
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )


def _config_image_size(config: PretrainedConfig) -> int | None:
    vision = getattr(config, "vision_config", None) or config
    size = getattr(vision, "image_size", None)
    return int(size) if size else None


def load_image_processor(
    model_name_or_path: str | os.PathLike,
    *,
    image_size: int | None = None,
    normalization: str | None = None,
) -> BaseImageProcessor:
    """The image processor for a model folder or Hub id.

    A ``preprocessor_config.json`` next to the model wins (unless ``normalization`` overrides mean/std); models
    without one get the defaults of their family from the architecture table. ``normalization`` is one of
    ``imagenet``, ``inception`` (0.5/0.5) or ``clip``.
    """
    if normalization is not None and normalization not in NORMALIZATIONS:
        raise ValueError(f"Unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}.")
    local = Path(model_name_or_path).is_dir()
    if not local or _has_local_processor(model_name_or_path):
        try:
            processor = AutoImageProcessor.from_pretrained(str(model_name_or_path))
        except OSError:
            if local:
                raise
            processor = None  # a Hub model without a processor file: fall through to the table
        if processor is not None:
            if normalization:
                processor.image_mean, processor.image_std = (list(v) for v in NORMALIZATIONS[normalization])
            if image_size:
                _resize_processor(processor, image_size)
            return processor
    config = AutoConfig.from_pretrained(str(model_name_or_path))
    return default_image_processor(config, image_size=image_size, normalization=normalization)


def _resize_processor(processor: BaseImageProcessor, image_size: int) -> None:
    """Scale a processor's resize and crop to a new square ``image_size``, keeping its resize/crop ratio."""
    crop = getattr(processor, "crop_size", None)
    size = processor.size
    if getattr(processor, "do_center_crop", False) and crop and crop.get("height"):
        ratio = (size.get("shortest_edge") or size.get("height")) / crop["height"]
        processor.crop_size = {"height": image_size, "width": image_size}
        processor.size = {"shortest_edge": int(round(image_size * ratio))}
    else:
        processor.size = {"height": image_size, "width": image_size}
