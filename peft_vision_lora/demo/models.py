"""The classifiers behind the demo: adapter folders (or Hub ids) on one shared backbone, safe to call from threads.

Every folder becomes one adapter of a :class:`~peft_vision_lora.MultiAdapterClassifier`, with its own head and labels.
Images are untrusted input: they are read with the package's guarded reader (format allow-list, decompression-bomb
limit) and anything that cannot be classified raises :class:`BadImageError` with a message meant for a person.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import PIL.ImageOps
import torch
from huggingface_hub import snapshot_download
from peft import PeftConfig

from ..adapters import ADAPTER_CONFIG, adapter_backbone_config
from ..data.images import BadImageError, ImageSource, describe, open_image, to_rgb
from ..io import looks_like_path
from ..multi_adapter import MultiAdapterClassifier
from ..processing import native_image_size

# What a Hub snapshot of a run folder needs for the demo: the adapter, the results tab and the example images.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.png", "examples/*"]
# Below this many pixels on a side an image carries no information a classifier could use.
MIN_SIDE = 8
_MODE_NOTES = {
    "CMYK": "CMYK image converted to RGB.",
    "I;16": "16-bit image scaled to 8 bits.",
    "I;16B": "16-bit image scaled to 8 bits.",
    "I;16L": "16-bit image scaled to 8 bits.",
    "I": "32-bit integer image scaled to 8 bits.",
}


@dataclass
class DemoImage:
    """An image ready to classify (8-bit RGB, upright), with what was done to it in words."""

    image: PIL.Image.Image
    name: str
    notes: list[str] = field(default_factory=list)


def read_image(source: ImageSource, name: str | None = None) -> DemoImage:
    """Decode an uploaded file (path, bytes or PIL image) for classification, or raise :class:`BadImageError`.

    Refused: files that are not images (or not of the plain raster formats), truncated or corrupt files, images over
    PIL's decompression-bomb limit, and images smaller than ``MIN_SIDE`` pixels on a side. 16-bit and CMYK images are
    converted and say so in ``notes``.
    """
    name = name or describe(source)
    image = open_image(source)
    try:
        if min(image.size) < MIN_SIDE:
            raise BadImageError(
                name, f"the image is {image.width}x{image.height} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed"
            )
        image.load()
        notes = [_MODE_NOTES[image.mode]] if image.mode in _MODE_NOTES else []
        rgb = to_rgb(PIL.ImageOps.exif_transpose(image))
    except BadImageError:
        raise
    except Exception as exc:  # PIL reports corrupt and truncated data with many exception types
        raise BadImageError(name, _reason(exc)) from exc
    finally:
        if image is not source:
            image.close()
    return DemoImage(rgb, name, notes)


def _reason(exc: BaseException) -> str:
    message = str(exc) or type(exc).__name__
    if "truncated" in message or "broken data stream" in message:
        return f"the file is truncated or corrupt ({message})"
    return message


def resolve_run_folder(path_or_id: str | os.PathLike) -> Path:
    """A local copy of a run folder: the folder itself, or a Hub snapshot with its plots and example images."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if looks_like_path(os.fspath(path_or_id)):
        raise FileNotFoundError(f"Adapter folder {os.fspath(path_or_id)!r} does not exist.")
    return Path(snapshot_download(os.fspath(path_or_id), allow_patterns=HUB_PATTERNS))


def _unique_names(sources: Sequence[str]) -> list[str]:
    names: list[str] = []
    for source in sources:
        base = Path(source).name if Path(source).expanduser().is_dir() else source
        name, n = base, 2
        while name in names:
            name, n = f"{base} ({n})", n + 1
        names.append(name)
    return names


class DemoModels:
    """The demo's adapters on one backbone. :meth:`predict` may be called from many threads at once: the
    ``MultiAdapterClassifier`` underneath is thread-safe, so concurrent requests share the backbone without a lock."""

    def __init__(self, sources: Sequence[str | os.PathLike], *, base_model: str | None = None) -> None:
        if not sources:
            raise ValueError("Give at least one adapter folder or Hub id.")
        sources = [os.fspath(s) for s in sources]
        self.names = _unique_names(sources)
        self.folders = {name: resolve_run_folder(s) for name, s in zip(self.names, sources)}
        bases = {name: self._base_of(folder) for name, folder in self.folders.items()}
        base = base_model or next(iter(bases.values()))[0]
        sizes = {size for _, size in bases.values()}
        if (base_model is None and len({b for b, _ in bases.values()}) > 1) or len(sizes) > 1:
            listed = "; ".join(f"{n}: {b} at {s} px" for n, (b, s) in bases.items())
            raise ValueError(
                f"The adapters do not share one backbone and input size ({listed}). One demo serves adapters of "
                "one backbone; start one demo per backbone."
            )
        self.classifier = MultiAdapterClassifier(base)
        for name, folder in self.folders.items():
            self.classifier.add_adapter(name, folder)

    @staticmethod
    def _base_of(folder: Path) -> tuple[str, int]:
        if not (folder / ADAPTER_CONFIG).is_file():
            raise FileNotFoundError(
                f"{folder} is not an adapter folder (no {ADAPTER_CONFIG}). The demo serves LoRA adapter folders; "
                "a merged or fully fine-tuned model folder works with `peft-vision-lora predict`."
            )
        backbone, base, _ = adapter_backbone_config(folder, PeftConfig.from_pretrained(folder))
        if base is None:
            raise ValueError(f"Adapter {folder} does not name its base model; pass base_model=...")
        local = Path(base).expanduser()
        return (os.path.realpath(local) if local.exists() else base), native_image_size(backbone)

    def labels(self, name: str) -> list[str]:
        return self.classifier.labels[name]

    def predict(
        self, name: str, images: Sequence[DemoImage | PIL.Image.Image], top_k: int = 5
    ) -> list[list[dict[str, float | str]]]:
        """``[{"label", "score"}]`` (best first) for each image, from adapter ``name``."""
        if name not in self.folders:
            raise KeyError(f"Unknown model {name!r}; loaded: {', '.join(self.names)}.")
        pils = [i.image if isinstance(i, DemoImage) else i for i in images]
        pixel_values = self.classifier.processors[name](pils, return_tensors="pt")["pixel_values"]
        logits = self.classifier(pixel_values, adapter=name)
        probs = logits.float().softmax(-1)
        scores, ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        labels = self.labels(name)
        return [
            [{"label": labels[i], "score": float(s)} for s, i in zip(row_scores, row_ids.tolist())]
            for row_scores, row_ids in zip(scores, ids)
        ]

    def classify(self, name: str, source: ImageSource, top_k: int = 5) -> tuple[list[dict], DemoImage, float]:
        """Read and classify one upload; returns the predictions, the image and the latency of the call in seconds."""
        start = time.perf_counter()
        image = read_image(source)
        with torch.inference_mode():
            predictions = self.predict(name, [image], top_k)[0]
        return predictions, image, time.perf_counter() - start
