"""Fashion-MNIST from Debian's IDX files: the parser on tiny synthetic files, the loader on the real package."""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from peft_vision_lora.offline.fashion_mnist import (
    CLASS_NAMES,
    DEBIAN_DIR,
    IdxFormatError,
    load_fashion_mnist,
    read_idx,
    read_split,
)

_TYPE_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C}


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    data = bytes([0, 0, _TYPE_CODES[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_fashion_mnist(root: Path, *, train_per_class: int = 4, test_per_class: int = 2, size: int = 5) -> Path:
    """A tiny Fashion-MNIST: every image is filled with its own index, so selections can be traced back."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(len(CLASS_NAMES), dtype=np.uint8), per_class)
        images = np.repeat(np.arange(len(labels), dtype=np.uint8), size * size).reshape(-1, size, size)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images, compress=True)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels, compress=True)
    return root


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", ["u1", ">i4"])
def test_read_idx_round_trip(tmp_path, compress, dtype):
    array = (np.arange(24).reshape(2, 3, 4) * (1 if dtype == "u1" else -1000)).astype(dtype)
    result = read_idx(write_idx(tmp_path / "a.idx", array, compress=compress))
    assert result.shape == (2, 3, 4) and result.dtype.isnative
    np.testing.assert_array_equal(result, array)


def _corrupt(tmp_path: Path, kind: str) -> Path:
    path = write_idx(tmp_path / "labels-idx1-ubyte", np.arange(10, dtype=np.uint8))
    data = path.read_bytes()
    corrupted = {
        "magic": b"\x01\x02" + data[2:],
        "type": data[:2] + b"\x42" + data[3:],
        "truncated": data[:-3],
        "trailing": data + b"\0",
        "header": data[:6],
        "gzip": gzip.compress(data)[:-12],
        "empty": b"",
    }[kind]
    path.write_bytes(corrupted)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("magic", "bad IDX magic number 0x01020801"),
        ("type", "bad IDX magic number"),
        ("truncated", r"7 data bytes, but shape \(10,\) of uint8 needs 10"),
        ("trailing", "11 data bytes"),
        ("header", "truncated header"),
        ("gzip", "corrupt gzip stream"),
        ("empty", "bad IDX magic number"),
    ],
)
def test_corrupt_idx_names_the_file(tmp_path, kind, message):
    path = _corrupt(tmp_path, kind)
    with pytest.raises(IdxFormatError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_split_files_must_agree(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm")
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8), compress=True)
    with pytest.raises(IdxFormatError, match=r"has 20 images but .*t10k-labels-idx1-ubyte\.gz has 3 labels"):
        read_split(root, "test")
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.full(20, 10, dtype=np.uint8), compress=True)
    with pytest.raises(IdxFormatError, match=r"t10k-labels-idx1-ubyte\.gz: label 10 outside 0\.\.9"):
        read_split(root, "test")


def test_raw_files_are_found_too(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm")
    gz = root / "train-labels-idx1-ubyte.gz"
    (root / "train-labels-idx1-ubyte").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    images, labels = read_split(root, "train")
    assert images.shape == (40, 5, 5) and labels.tolist()[:3] == [0, 1, 2]


def test_loader_draws_a_seeded_stratified_subset(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm")
    data = load_fashion_mnist(root, per_class_train=2, per_class_test=1, seed=3)
    assert {split: len(ds) for split, ds in data.items()} == {"train": 20, "test": 10}
    assert data["train"].features["label"].names == list(CLASS_NAMES)
    assert Counter(data["train"]["label"]) == dict.fromkeys(range(10), 2)
    for example in data["train"]:
        image = example["image"]
        assert image.mode == "L" and image.size == (5, 5)
        index = int(np.asarray(image)[0, 0])  # each synthetic image is filled with its source index
        assert index % len(CLASS_NAMES) == example["label"]

    def picked(ds):
        return [int(np.asarray(example["image"])[0, 0]) for example in ds]

    again = load_fashion_mnist(root, per_class_train=2, per_class_test=1, seed=3)
    assert picked(again["train"]) == picked(data["train"]) and picked(again["test"]) == picked(data["test"])
    other = load_fashion_mnist(root, per_class_train=2, per_class_test=1, seed=4)
    assert picked(other["train"]) != picked(data["train"])
    # Each split has its own random stream: the train size never changes which test images are drawn.
    assert picked(load_fashion_mnist(root, per_class_train=3, per_class_test=1, seed=3)["test"]) == picked(data["test"])
    assert len(load_fashion_mnist(root, per_class_train=None, per_class_test=None)["train"]) == 40


def test_loader_errors_are_actionable(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm")
    with pytest.raises(ValueError, match="train split: Class 'T-shirt/top' has 4 examples, fewer than 5"):
        load_fashion_mnist(root, per_class_train=5, per_class_test=1)
    with pytest.raises(ValueError, match="per_class_test must be a positive integer"):
        load_fashion_mnist(root, per_class_test=0)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as error:
        load_fashion_mnist(tmp_path / "nowhere")
    assert "train-images-idx3-ubyte" in str(error.value)


@pytest.mark.skipif(
    not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_DIR}); apt-get install dataset-fashion-mnist",
)
def test_real_debian_fashion_mnist():
    images, labels = read_split(DEBIAN_DIR, "train")
    assert images.shape == (60000, 28, 28) and Counter(labels.tolist()) == dict.fromkeys(range(10), 6000)
    test_images, test_labels = read_split(DEBIAN_DIR, "test")
    assert test_images.shape == (10000, 28, 28) and Counter(test_labels.tolist()) == dict.fromkeys(range(10), 1000)

    data = load_fashion_mnist(per_class_train=20, per_class_test=5, seed=0)
    assert len(data["train"]) == 200 and len(data["test"]) == 50
    assert Counter(data["test"]["label"]) == dict.fromkeys(range(10), 5)
    example = data["train"][0]
    pixels = np.asarray(example["image"])
    assert example["image"].mode == "L" and pixels.shape == (28, 28)
    # The stored image is one of the source images of its class, pixel for pixel.
    same_class = images[labels == example["label"]]
    assert (same_class == pixels).all(axis=(1, 2)).any()
