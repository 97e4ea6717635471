"""``load_image_dataset``: any image classification data -> a checked ``DatasetDict`` of ``image`` and ``label``."""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Image

from .images import BadImageError, check_image
from .layouts import normalize_columns, read_source

logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error", "keep")
_LISTED = 20  # unreadable files named in the report; the count covers all of them


def load_image_dataset(
    source: str | os.PathLike | Dataset | DatasetDict,
    *,
    format: str | None = None,
    val_fraction: float | None = None,
    shots: int | None = None,
    seed: int = 0,
    on_bad_image: str = "skip",
) -> DatasetDict:
    """Load image classification data as a ``DatasetDict`` with ``image`` (lazily decoded) and ``label`` columns.

    Args:
        source: an image folder (``root/<split>/<class>/*`` or ``root/<class>/*``), an unpacked reference dataset
            (CIFAR-100 python, CUB-200-2011, NABirds, Oxford Flowers-102, Stanford Cars, Stanford Dogs, FGVC
            ``train/val/test.json``), a folder written by ``save_to_disk``, a Hub dataset id, or a ``Dataset``/
            ``DatasetDict`` (its image and label columns are found by their features).
        format: one of ``peft_vision_lora.data.FORMATS``; detected from the files when None.
        val_fraction: carve a stratified ``validation`` split of this fraction from train (at least one image of
            each class with two or more), when the source has no validation split.
        shots: keep this many train images per class (few-shot), after carving the validation split.
        seed: seed of ``val_fraction`` and ``shots``; the same seed selects the same images on every machine.
        on_bad_image: ``"skip"`` leaves unreadable images out and logs them once (paths and count); ``"error"``
            raises on the first one, naming the file; ``"keep"`` does not scan (for huge datasets: the transforms
            still survive unreadable files).

    Splits come in train/validation/test order and share one ``ClassLabel``.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if shots is not None and shots < 1:
        raise ValueError(f"shots must be a positive number of images per class, got {shots}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if isinstance(source, (Dataset, DatasetDict)):
        if format is not None:
            raise ValueError("format applies to folders and Hub ids, not to an in-memory dataset")
        name = f"the in-memory {type(source).__name__}"
        data, kind = normalize_columns(source, name), "in memory"
    else:
        name = str(source)
        data, kind = read_source(source, format)
    if "train" not in data:
        raise ValueError(f"{name} has no train split (splits: {list(data)})")
    if on_bad_image != "keep":
        data = _drop_unreadable(data, name, on_bad_image)
    if val_fraction is not None:
        if "validation" in data:
            logger.warning("%s has its own validation split: val_fraction=%s is not used", name, val_fraction)
        else:
            train, validation = stratified_split(data["train"], val_fraction, seed)
            others = {split: ds for split, ds in data.items() if split != "train"}
            data = DatasetDict({"train": train, "validation": validation, **others})
    if shots is not None:
        data["train"] = few_shot(data["train"], shots, seed)
    logger.info("Loaded %s (%s): %s", name, kind, ", ".join(f"{s} {len(ds)}" for s, ds in data.items()))
    return data


def _drop_unreadable(data: DatasetDict, name: str, policy: str) -> DatasetDict:
    """Check every image and drop the unreadable ones, reported in one warning (or raise on the first one)."""
    kept, bad = {}, []
    for split, ds in data.items():
        skipped = []
        for row, error in enumerate(_scan(ds, raise_first=policy == "error")):
            if error is not None:
                skipped.append(row)
                bad.append((split, error))
        kept[split] = ds.select(np.setdiff1d(np.arange(len(ds)), skipped)) if skipped else ds
    if bad:
        splits = [s for s in data if len(kept[s]) < len(data[s])]
        counts = ", ".join(f"{len(data[s]) - len(kept[s])} of {len(data[s])} in {s}" for s in splits)
        listing = "\n".join(f"  {e.source}: {e.reason}" for _, e in bad[:_LISTED])
        more = f"\n  ... and {len(bad) - _LISTED} more" if len(bad) > _LISTED else ""
        logger.warning("Skipped %d unreadable image(s) of %s (%s):\n%s%s", len(bad), name, counts, listing, more)
    return DatasetDict(kept)


def _scan(ds: Dataset, *, raise_first: bool) -> list[BadImageError | None]:
    values = ds.cast_column("image", Image(decode=False))["image"]
    results: list[BadImageError | None] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        for error in pool.map(_check, values):
            if error is not None and raise_first:
                pool.shutdown(wait=False, cancel_futures=True)
                raise error
            results.append(error)
    return results


def _check(value: Any) -> BadImageError | None:
    try:
        check_image(value)
    except BadImageError as exc:
        return exc
    return None


def _labels(ds: Dataset) -> np.ndarray:
    return ds.with_format("arrow")["label"].to_numpy()


def _class_rows(labels: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Per class (in label order), its row numbers in a seeded random order.

    Ordering by ``rng.random`` (rather than ``permutation``) ties the result to the bit stream alone, which numpy
    keeps stable across versions and platforms.
    """
    ordered = {}
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        ordered[int(label)] = rows[np.argsort(rng.random(rows.size), kind="stable")]
    return ordered


def stratified_split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``ds`` into (rest, held out) with ``fraction`` of each class held out (one at least, when the class
    has two images or more). Rows keep their original order in both parts."""
    held = []
    for rows in _class_rows(_labels(ds), np.random.default_rng([seed, 0])).values():
        count = math.floor(rows.size * fraction + 0.5)
        held.append(rows[: min(max(count, 1 if rows.size > 1 else 0), rows.size - 1)])
    held_rows = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(ds)), held_rows)
    return ds.select(rest), ds.select(held_rows)


def few_shot(ds: Dataset, shots: int, seed: int) -> Dataset:
    """Keep ``shots`` seeded random rows of each class (all of a class that has fewer, with a warning)."""
    names = ds.features["label"].names
    counts = np.bincount(_labels(ds), minlength=len(names))
    short = [f"{names[label]} ({count})" for label, count in enumerate(counts) if 0 < count < shots]
    if short:
        logger.warning(
            "%d class(es) have fewer than %d training images, all kept: %s", len(short), shots, ", ".join(short)
        )
    return at_most_per_class(ds, shots, seed)


def at_most_per_class(ds: Dataset, count: int, seed: int) -> Dataset:
    """At most ``count`` seeded random rows of each class, in their original order (``ds`` itself when no class
    has more)."""
    per_class = _class_rows(_labels(ds), np.random.default_rng([seed, 1]))
    if all(rows.size <= count for rows in per_class.values()):
        return ds
    return ds.select(np.sort(np.concatenate([rows[:count] for rows in per_class.values()])))
