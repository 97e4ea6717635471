"""RandAugment and TrivialAugment-Wide on PIL images, drawn from a numpy ``Generator`` (no torchvision needed).

The op lists and magnitude ranges follow torchvision's ``RandAugment`` (31 bins, default 2 ops at magnitude 9) and
``TrivialAugmentWide`` (one op, uniformly drawn magnitude), so published recipes carry over. Geometric ops fill
uncovered pixels with ``fill`` (the normalisation mean, so the fill is zero after normalising).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import PIL.ImageOps

AUTO_AUGMENT_POLICIES = ("rand", "trivial")
NUM_BINS = 31
_Apply = Callable[[PIL.Image.Image, float, tuple[int, ...]], PIL.Image.Image]


@dataclass
class Augmentation:
    """Per-image train augmentation, declared once: the fields of ``TransformOptions`` and the training flags."""

    min_crop_scale: float = field(
        default=0.35,
        metadata={
            "help": "Random resized crop: smallest crop area, as a fraction of the image. 0.35 rather than "
            "ImageNet's 0.08: a short fine-tuning run on small or low-resolution images learns less from tiny crops."
        },
    )
    hflip: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip (0 for text, digits, ...)."})
    auto_augment: Literal["rand", "trivial"] | None = field(
        default=None, metadata={"help": "Extra augmentation policy: rand (RandAugment) or trivial (TrivialAugment)."}
    )
    num_ops: int = field(default=2, metadata={"help": "RandAugment: ops per image."})
    magnitude: int = field(default=9, metadata={"help": "RandAugment: magnitude bin, 0-30."})

    def __post_init__(self) -> None:
        if not 0 < self.min_crop_scale <= 1:
            raise ValueError(f"--min_crop_scale must be in (0, 1], got {self.min_crop_scale}.")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"--hflip is a probability, got {self.hflip}.")
        if self.auto_augment is not None and self.auto_augment not in AUTO_AUGMENT_POLICIES:
            raise ValueError(
                f"--auto_augment must be one of {AUTO_AUGMENT_POLICIES} or None, got {self.auto_augment!r}."
            )
        if self.num_ops < 1 or not 0 <= self.magnitude < NUM_BINS:
            raise ValueError(f"--num_ops must be >= 1 and --magnitude in 0..30, got {self.num_ops}, {self.magnitude}.")

    def augmentation(self) -> dict[str, Any]:
        """These fields alone, e.g. to build ``TransformOptions`` from training arguments."""
        return {name: getattr(self, name) for name in Augmentation.__dataclass_fields__}


def _affine(matrix: Callable[[float], tuple[float, ...]]) -> _Apply:
    return lambda img, v, fill: img.transform(
        img.size, PIL.Image.Transform.AFFINE, matrix(v), resample=PIL.Image.Resampling.BILINEAR, fillcolor=fill
    )


def _enhance(enhancer: type) -> _Apply:
    return lambda img, v, fill: enhancer(img).enhance(1.0 + v)


_OPS: dict[str, _Apply] = {
    "Identity": lambda img, v, fill: img,
    "ShearX": _affine(lambda v: (1, v, 0, 0, 1, 0)),
    "ShearY": _affine(lambda v: (1, 0, 0, v, 1, 0)),
    "TranslateX": _affine(lambda v: (1, 0, v, 0, 1, 0)),
    "TranslateY": _affine(lambda v: (1, 0, 0, 0, 1, v)),
    "Rotate": lambda img, v, fill: img.rotate(v, resample=PIL.Image.Resampling.BILINEAR, fillcolor=fill),
    "Brightness": _enhance(PIL.ImageEnhance.Brightness),
    "Color": _enhance(PIL.ImageEnhance.Color),
    "Contrast": _enhance(PIL.ImageEnhance.Contrast),
    "Sharpness": _enhance(PIL.ImageEnhance.Sharpness),
    "Posterize": lambda img, v, fill: PIL.ImageOps.posterize(img, int(v)),
    "Solarize": lambda img, v, fill: PIL.ImageOps.solarize(img, int(v)),
    "AutoContrast": lambda img, v, fill: PIL.ImageOps.autocontrast(img),
    "Equalize": lambda img, v, fill: PIL.ImageOps.equalize(img),
}


@dataclass(frozen=True)
class _Space:
    """Magnitudes per bin of each op of a policy, and whether the op's magnitude takes a random sign."""

    magnitudes: dict[str, np.ndarray]
    signed: frozenset[str]


def _space(policy: str, size: tuple[int, int]) -> _Space:
    bins = np.arange(NUM_BINS)
    wide = policy == "trivial"
    geometric = {
        "ShearX": np.linspace(0.0, 0.99 if wide else 0.3, NUM_BINS),
        "ShearY": np.linspace(0.0, 0.99 if wide else 0.3, NUM_BINS),
        "TranslateX": np.linspace(0.0, 32.0 if wide else 150.0 / 331.0 * size[0], NUM_BINS),
        "TranslateY": np.linspace(0.0, 32.0 if wide else 150.0 / 331.0 * size[1], NUM_BINS),
        "Rotate": np.linspace(0.0, 135.0 if wide else 30.0, NUM_BINS),
    }
    color = {
        name: np.linspace(0.0, 0.99 if wide else 0.9, NUM_BINS)
        for name in ("Brightness", "Color", "Contrast", "Sharpness")
    }
    magnitudes = {
        "Identity": np.zeros(NUM_BINS),
        **geometric,
        **color,
        "Posterize": 8 - np.round(bins / ((NUM_BINS - 1) / (6 if wide else 4))),
        "Solarize": np.linspace(255.0, 0.0, NUM_BINS),
        "AutoContrast": np.zeros(NUM_BINS),
        "Equalize": np.zeros(NUM_BINS),
    }
    return _Space(magnitudes, frozenset((*geometric, *color)))


def auto_augment(
    image: PIL.Image.Image,
    rng: np.random.Generator,
    policy: str,
    *,
    num_ops: int = 2,
    magnitude: int = 9,
    fill: tuple[int, ...] = (0, 0, 0),
) -> PIL.Image.Image:
    """Apply ``policy`` (``"rand"``: ``num_ops`` ops at bin ``magnitude``; ``"trivial"``: one op at a random bin)."""
    if policy not in AUTO_AUGMENT_POLICIES:
        raise ValueError(f"Unknown auto_augment policy {policy!r}; choose one of {', '.join(AUTO_AUGMENT_POLICIES)}.")
    space = _space(policy, image.size)
    names = list(space.magnitudes)
    for _ in range(num_ops if policy == "rand" else 1):
        name = names[int(rng.integers(len(names)))]
        level = magnitude if policy == "rand" else int(rng.integers(NUM_BINS))
        value = float(space.magnitudes[name][level])
        if name in space.signed and rng.random() < 0.5:
            value = -value
        image = _OPS[name](image, value, fill)
    return image
