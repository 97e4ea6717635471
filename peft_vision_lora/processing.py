"""Input geometry: what a model expects of its images (size, normalisation, resampling, eval crop), its image
processor, and rebuilding a model for another input size.

:class:`Preprocessing` serves both directions: the architecture table's defaults for checkpoints that ship no
``preprocessor_config.json`` (made into an image processor by :func:`load_image_processor`), and what the transforms
read back from any transformers image processor (:meth:`Preprocessing.from_processor`), as timm's
``resolve_data_config`` does.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, PretrainedConfig, PreTrainedModel
from transformers.image_processing_utils import BaseImageProcessor

try:  # transformers 5 splits processors by backend; the PIL one needs no torchvision
    from transformers import CLIPImageProcessorPil as ShortSideCropProcessor
except ImportError:
    from transformers import CLIPImageProcessor as ShortSideCropProcessor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resampling filter ids, as transformers' image processors store them.
BILINEAR, BICUBIC = 2, 3

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": (INCEPTION_MEAN, INCEPTION_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: its input size, normalisation and eval resize (taken from its image processor)."""

    size: tuple[int, int] = field(default=(224, 224), metadata={"help": "Model input (height, width)."})
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN, metadata={"help": "Per-channel mean, 0-1 scale."})
    std: tuple[float, ...] = field(default=IMAGENET_STD, metadata={"help": "Per-channel std, 0-1 scale."})
    resample: int = field(default=BICUBIC, metadata={"help": "PIL resampling filter id (2 bilinear, 3 bicubic)."})
    crop_pct: float | None = field(
        default=0.875,
        metadata={"help": "Eval: resize the short side to size/crop_pct, then center crop. None: resize to size."},
    )
    keep_aspect: bool = field(
        default=True,
        metadata={"help": "Eval resize with crop_pct: keep the aspect ratio (short side) or stretch to size/crop_pct."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.size, int):
            object.__setattr__(self, "size", (self.size, self.size))
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be a positive (height, width), got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got {self.mean}, {self.std}")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1] or None, got {self.crop_pct}")

    @classmethod
    def from_processor(cls, processor: Any) -> Preprocessing:
        """Read size, mean, std, resample and crop from a transformers image processor."""
        size = dict(processor.size or {})
        resample = int(getattr(processor, "resample", None) or BICUBIC)
        mean, std = processor.image_mean, processor.image_std
        crop = dict(getattr(processor, "crop_size", None) or {})
        if getattr(processor, "do_center_crop", False) and crop.get("height"):
            out = (crop["height"], crop["width"])
            if size.get("shortest_edge"):
                crop_pct, keep_aspect = min(out) / size["shortest_edge"], True
            elif size.get("height") and size.get("width"):  # DeiT style: stretch to a fixed size, then crop
                crop_pct, keep_aspect = out[0] / size["height"], False
            else:
                raise ValueError(f"Unsupported image processor size {size} with center crop {crop}")
            return cls(size=out, mean=mean, std=std, resample=resample, crop_pct=crop_pct, keep_aspect=keep_aspect)
        if size.get("height") and size.get("width"):
            return cls(size=(size["height"], size["width"]), mean=mean, std=std, resample=resample, crop_pct=None)
        if size.get("shortest_edge"):
            edge = size["shortest_edge"]
            return cls(size=(edge, edge), mean=mean, std=std, resample=resample, crop_pct=1.0)
        raise ValueError(f"Unsupported image processor size {size}: expected height/width or shortest_edge")


# ------------------------------------------------------------------------------------------------ image processors

PROCESSOR_FILE = "preprocessor_config.json"


def _has_local_processor(path: str | os.PathLike) -> bool:
    return (Path(path) / PROCESSOR_FILE).is_file()


def default_image_processor(
    config: PretrainedConfig, *, image_size: int | None = None, normalization: str | None = None
) -> BaseImageProcessor:
    """The eval preprocessing of the architecture table: resize the short side to size/crop_pct, center crop."""
    defaults = _architecture(config).processor
    size = image_size or getattr(vision_config(config), "image_size", None) or defaults.size[0]
    mean, std = NORMALIZATIONS[normalization] if normalization else (defaults.mean, defaults.std)
    return ShortSideCropProcessor(
        size={"shortest_edge": int(round(size / (defaults.crop_pct or 1.0)))},
        crop_size={"height": size, "width": size},
        resample=defaults.resample,
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )


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


# ----------------------------------------------------------------------------------------------------- input size


def vision_config(config: PretrainedConfig) -> PretrainedConfig:
    """The part of ``config`` that describes the image encoder (CLIP nests it)."""
    return getattr(config, "vision_config", None) or config


def native_image_size(model_or_config: nn.Module | PretrainedConfig) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return int(vision_config(config).image_size)


def resize_position_grid(table: torch.Tensor, grid: int) -> torch.Tensor:
    """``(1, 1 + n*n, dim)`` position embeddings (class token first) resampled to ``(1, 1 + grid*grid, dim)``: the
    bicubic resampling ViT and CLIP apply under ``interpolate_pos_encoding=True``; the class entry is kept."""
    cls, patches = table[:, :1], table[:, 1:]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"Position embeddings of {patches.shape[1]} patches do not form a square grid.")
    if side == grid:
        return table
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    patches = torch.nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(table.dtype)], dim=1)


def resize_position_embeddings(model: PreTrainedModel, image_size: int) -> PreTrainedModel:
    """``model`` rebuilt for square inputs of ``image_size``.

    Position embeddings are resampled once (:func:`resize_position_grid`), as ``interpolate_pos_encoding=True``
    resamples them at every forward, and ``image_size`` is set in the config. Pipelines pass no
    ``interpolate_pos_encoding``, so this is what makes a model trained at another size usable there. DINOv2
    interpolates by itself and is returned unchanged, as is a model already at ``image_size``.
    """
    if _architecture(model).model_type == "dinov2" or native_image_size(model) == image_size:
        return model
    embeddings = next(m for m in model.modules() if callable(getattr(m, "interpolate_pos_encoding", None)))
    # ViT keeps a (1, positions, dim) Parameter, CLIP an Embedding(positions, dim).
    table = getattr(embeddings, "position_embeddings", None)
    table = embeddings.position_embedding.weight if table is None else table
    config = copy.deepcopy(model.config)
    vision = vision_config(config)
    if image_size % vision.patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {vision.patch_size}.")
    with torch.no_grad():
        resized = resize_position_grid(table.reshape(1, -1, table.shape[-1]), image_size // vision.patch_size)
    state = model.state_dict()
    name = next(n for n, p in model.named_parameters() if p is table)
    state[name] = resized.reshape(-1, *table.shape[1:]) if table.ndim == 2 else resized
    vision.image_size = image_size
    resized_model = type(model)(config)
    resized_model.load_state_dict(state)
    resized_model.name_or_path = model.name_or_path
    return resized_model


def _architecture(model_or_config: nn.Module | PretrainedConfig) -> Any:
    # The architecture table is built from Preprocessing, so architectures imports this module: import it late.
    from .architectures import get_architecture

    return get_architecture(model_or_config)
