"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, as a ``datasets.DatasetDict`` of PIL images.

A real image dataset that a package registry provides, so the main job runs where the Hub is unreachable:
``apt-get install dataset-fashion-mnist`` puts the four IDX files (gzip) in ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_PACKAGE = "dataset-fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FEATURES = Features({"image": ImageFeature(), "label": ClassLabel(names=list(CLASS_NAMES))})

# IDX type codes (third magic byte); multi-byte values are big-endian.
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """A file is not a well-formed IDX file (or gzip of one)."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (raw or gzip-compressed) as a native-endian numpy array of its declared type and shape."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxFormatError(f"{path}: corrupt gzip stream ({err}).") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise IdxFormatError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex() or '(empty)'}; expected 00 00 <type> <ndim>."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated header ({len(raw)} bytes for {ndim} dimensions).")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxFormatError(
            f"{path}: {len(raw) - header} data bytes, but shape {shape} of {dtype.name} needs {expected}."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_split(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one split: uint8 ``(n, 28, 28)`` and int64 ``(n,)``, validated against each other."""
    if split not in SPLIT_FILES:
        raise ValueError(f"Unknown Fashion-MNIST split {split!r}; choose one of {', '.join(SPLIT_FILES)}.")
    images_path, labels_path = (_find(Path(root), stem) for stem in SPLIT_FILES[split])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IdxFormatError(f"{images_path}: expected uint8 images (n, h, w), got {images.dtype} {images.shape}.")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IdxFormatError(f"{labels_path}: expected uint8 labels (n,), got {labels.dtype} {labels.shape}.")
    if len(images) != len(labels):
        raise IdxFormatError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels.")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise IdxFormatError(f"{labels_path}: label {labels.max()} outside 0..{len(CLASS_NAMES) - 1}.")
    return images, labels.astype(np.int64)


def stratified_indices(labels: np.ndarray, per_class: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` examples drawn without replacement from every class (all when ``None``)."""
    if per_class is None:
        return np.arange(len(labels))
    chosen = []
    for label in range(len(CLASS_NAMES)):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ValueError(f"Class {CLASS_NAMES[label]!r} has {len(members)} examples, fewer than {per_class}.")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def load_fashion_mnist(
    root: str | os.PathLike | None = None,
    *,
    per_class_train: int | None = 300,
    per_class_test: int | None = 100,
    seed: int = 0,
) -> DatasetDict:
    """Fashion-MNIST ``train``/``test`` splits with ``image`` (28x28 grayscale PIL) and ``label`` (`CLASS_NAMES`).

    Args:
        root: Folder with the four IDX files (``.gz`` or raw); defaults to where Debian's package installs them.
        per_class_train: Examples kept per class in ``train`` (a seeded stratified subset); ``None`` keeps all 60,000.
        per_class_test: The same for ``test`` (10,000 in all).
        seed: Seed of the subsets; each split draws from its own stream, so one split's size never changes the other.
    """
    per_class = {"train": per_class_train, "test": per_class_test}
    for split, value in per_class.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"per_class_{split} must be a positive integer or None, got {value!r}.")
    root = Path(root) if root is not None else DEBIAN_DIR
    streams = np.random.SeedSequence(seed).spawn(len(SPLIT_FILES))
    splits = {}
    for split, stream in zip(SPLIT_FILES, streams):
        images, labels = read_split(root, split)
        try:
            keep = stratified_indices(labels, per_class[split], np.random.default_rng(stream))
        except ValueError as err:
            raise ValueError(f"Fashion-MNIST {split} split: {err} Lower per_class_{split}.") from err
        splits[split] = Dataset.from_dict(
            {"image": [Image.fromarray(images[i]) for i in keep], "label": labels[keep].tolist()},
            features=FEATURES,
        )
    return DatasetDict(splits)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install Debian's package with "
        f"`apt-get install {APT_PACKAGE}`, or pass root= a folder with the four IDX files."
    )
