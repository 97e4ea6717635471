"""What a model expects of its input: size, normalisation, resampling and eval crop (timm's ``resolve_data_config``).

One dataclass serves both directions: the architecture table's defaults for checkpoints that ship no
``preprocessor_config.json`` (made into an image processor by ``processing.load_image_processor``),
and what the transforms read back from any transformers image processor (:meth:`Preprocessing.from_processor`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
