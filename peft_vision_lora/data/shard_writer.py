"""``write_shards``: any dataset ``load_image_dataset`` reads -> WebDataset tar shards, ``labels.txt`` and a manifest.

The output is deterministic: for the same source and options the shards are byte-identical (samples in a seeded
order, tar headers with fixed owner, mode and time), so a re-run changes nothing a checksum or a resumed training run
could notice. Each split is written in a seeded random order because a streaming reader only shuffles within its
buffer: a class-sorted folder written in order would give class-sorted batches.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from datasets import Dataset, DatasetDict, Image

from ..io import atomic_path, make_folder, write_json, write_text
from .images import open_image, to_rgb, upright
from .loading import load_image_dataset
from .sample_stream import seeded_order
from .shard_reader import MANIFEST, compress_range

logger = logging.getLogger(__name__)

# Encoded formats kept byte for byte when no resize is asked; anything else is re-encoded as PNG (lossless).
_KEPT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass
class ShardOptions:
    """How ``write_shards`` cuts and encodes a dataset; the ``shard`` command's options."""

    shard_size: int = field(default=1000, metadata={"help": "Samples per shard."})
    max_side: int | None = field(
        default=None, metadata={"help": "Shrink images whose longer side exceeds this (re-encoded JPEG)."}
    )
    quality: int = field(default=90, metadata={"help": "JPEG quality of re-encoded images, 1-100."})
    seed: int = field(default=0, metadata={"help": "Seed of the order samples are written in."})

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"--shard_size must be >= 1, got {self.shard_size}")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"--max_side must be >= 1, got {self.max_side}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be in 1..100, got {self.quality}")


def write_shards(
    source: str | os.PathLike | Dataset | DatasetDict,
    out_dir: str | os.PathLike,
    *,
    format: str | None = None,
    on_bad_image: str = "skip",
    num_threads: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Write every split of ``source`` as ``out_dir/<split>-NNNNNN.tar`` shards (``<key>.<jpg|png|webp>`` +
    ``<key>.cls``), plus ``labels.txt`` and ``shards.json``; returns the manifest. ``options`` are the fields of
    :class:`ShardOptions` (``shard_size``, ``max_side``, ``quality``, ``seed``).

    ``max_side`` shrinks images whose longer side is larger (EXIF orientation applied, re-encoded as JPEG at
    ``quality``); otherwise JPEG, PNG and WebP bytes are copied unchanged. Unreadable images are reported and left
    out as ``load_image_dataset`` does (``on_bad_image="error"`` stops at the first).
    """
    opts = ShardOptions(**options)
    if on_bad_image == "keep":
        raise ValueError("--on_bad_image keep would write unreadable images into shards: use skip or error")
    data = load_image_dataset(source, format=format, on_bad_image=on_bad_image, seed=opts.seed)
    names = list(data["train"].features["label"].names)
    out = make_folder(out_dir)
    write_text(out / "labels.txt", "".join(f"{name}\n" for name in names))
    splits = {}
    threads = num_threads or os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:  # PIL encodes and decodes without the GIL
        for split, ds in data.items():
            splits[split] = _write_split(ds.cast_column("image", Image(decode=False)), out, split, pool, opts)
    manifest = {
        "format": "webdataset",
        "labels": "labels.txt",
        "num_classes": len(names),
        "source": str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__,
        "shard_size": opts.shard_size,
        "max_side": opts.max_side,
        "splits": splits,
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def _write_split(ds: Dataset, out: Path, split: str, pool: ThreadPoolExecutor, opts: ShardOptions) -> dict[str, Any]:
    order = seeded_order(np.random.default_rng([opts.seed, 2]), len(ds))
    shard_size = opts.shard_size
    labels = ds.with_format("arrow")["label"].to_numpy()
    numbers = []
    for shard, start in enumerate(range(0, len(ds), shard_size)):
        rows = order[start : start + shard_size]
        images = ds.select(rows)["image"]
        encoded = pool.map(lambda value: _encode(value, opts.max_side, opts.quality), images)
        path = out / f"{split}-{shard:06d}.tar"
        with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for position, (row, (data, ext)) in enumerate(zip(rows, encoded), start=start):
                key = f"{position:08d}"
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.cls", f"{int(labels[row])}\n".encode())
        numbers.append(f"{shard:06d}")
        logger.info("Wrote %s (%d samples)", path, len(rows))
    return {"pattern": f"{split}-{compress_range(numbers)}.tar", "shards": len(numbers), "samples": len(ds)}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed header fields: reproducible bytes
    tar.addfile(info, io.BytesIO(data))


def _encode(value: dict[str, Any], max_side: int | None, quality: int) -> tuple[bytes, str]:
    """The bytes and extension of one image: the original file where possible, else re-encoded."""
    data = value.get("bytes")
    if data is None:
        data = Path(value["path"]).read_bytes()
    image = open_image(data)
    try:
        big = max_side is not None and max(image.size) > max_side
        if not big and image.format in _KEPT:
            return data, _KEPT[image.format]
        rgb = to_rgb(upright(image))
        buffer = io.BytesIO()
        if big:
            scale = max_side / max(rgb.size)
            size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            rgb.resize(size, PIL.Image.Resampling.BICUBIC, reducing_gap=3.0).save(buffer, "JPEG", quality=quality)
            return buffer.getvalue(), "jpg"
        rgb.save(buffer, "PNG")
        return buffer.getvalue(), "png"
    finally:
        image.close()
