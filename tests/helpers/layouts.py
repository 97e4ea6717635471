"""Tiny copies of real dataset layouts and of the junk real folders contain, written with the real file formats."""

from __future__ import annotations

import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
FLOWERS12 = SHARED / "data" / "flowers12"


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random colour image (compresses well, yet every region differs)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(height // 8, 2), max(width // 8, 2), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def quadrants(width: int = 60, height: int = 40) -> Image.Image:
    """Red, green, blue and white quadrants (top-left, top-right, bottom-left, bottom-right): shows any rotation."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = height // 2, width // 2
    array[:h, :w] = (255, 0, 0)
    array[:h, w:] = (0, 255, 0)
    array[h:, :w] = (0, 0, 255)
    array[h:, w:] = (255, 255, 255)
    return Image.fromarray(array)


def write_jpeg(path: Path, width: int = 48, height: int = 40, seed: int = 0, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(width, height, seed).save(path, format="JPEG", quality=90, **save_kwargs)
    return path


def write_exif_rotated(path: Path, upright: Image.Image, orientation: int = 6) -> Path:
    """Store ``upright`` the way a camera would with EXIF ``orientation`` (pixels rotated, tag set)."""
    inverse = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    upright.transpose(inverse[orientation]).save(path, format="JPEG", quality=95, exif=exif)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A 100-byte PNG whose header claims ``width`` x ``height`` pixels (over PIL's decompression-bomb limit)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )
    return path


def write_junk_folder(root: Path) -> dict[str, list[str]]:
    """An image folder with every kind of bad input; returns the file names per kind (relative to root)."""
    good, bad = [], []
    for split, count in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(count):
                good.append(str(write_jpeg(root / split / cls / f"{i}.jpg", seed=i).relative_to(root)))
    cat = root / "train" / "cat"
    (cat / "zero.jpg").write_bytes(b"")
    data = (cat / "0.jpg").read_bytes()
    (cat / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (cat / "text.jpg").write_text("this is not an image\n")
    write_bomb_png(cat / "bomb.png")
    (root / "test" / "dog" / "zero.png").write_bytes(b"")
    bad += [
        "train/cat/zero.jpg",
        "train/cat/truncated.jpg",
        "train/cat/text.jpg",
        "train/cat/bomb.png",
        "test/dog/zero.png",
    ]
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:8, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(cat / "alpha.png")
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(1, (0, 0, 16, 8))
    palette.save(cat / "palette.png", transparency=0)
    Image.new("CMYK", (24, 20), (0, 255, 255, 0)).save(cat / "cmyk.jpg")  # pure red in CMYK
    Image.fromarray(np.full((12, 10), 65535 // 2, dtype=np.uint16)).save(cat / "gray16.png")
    Image.new("RGB", (1, 1), (10, 20, 30)).save(cat / "one_pixel.png")
    write_exif_rotated(cat / "rotated.jpg", quadrants())
    good += [
        f"train/cat/{n}" for n in ("alpha.png", "palette.png", "cmyk.jpg", "gray16.png", "one_pixel.png", "rotated.jpg")
    ]
    (cat / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(64))
    (cat / "Thumbs.db").write_bytes(bytes(128))
    (cat / "._0.jpg").write_bytes(b"\0\5\26\7AppleDouble")
    (root / "train" / "empty").mkdir()
    (root / "test" / "empty").mkdir()
    write_jpeg(root / "test" / "bird" / "0.jpg")  # a class folder in one split only
    good.append("test/bird/0.jpg")
    return {"good": good, "bad": bad}


# ----------------------------------------------------------------------------------------- reference layouts


def write_cifar100(root: Path, *, train: int = 6, test: int = 4, protocol: int = 2, bytes_keys: bool = True) -> Path:
    """``cifar-100-python/{meta,train,test}`` pickles with 3 fine classes (labels cycle 0, 1, 2)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)

    def key(name: str):
        return name.encode() if bytes_keys else name

    rng = np.random.default_rng(0)
    meta = {key("fine_label_names"): ["apple", "aquarium_fish", "baby"], key("coarse_label_names"): ["fruit", "fish"]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    for split, count in (("train", train), ("test", test)):
        batch = {
            key("filenames"): [f"img_{i}.png".encode() for i in range(count)],
            key("batch_label"): f"{split} batch".encode(),
            key("fine_labels"): [i % 3 for i in range(count)],
            key("coarse_labels"): [0] * count,
            key("data"): rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
        }
        (folder / split).write_bytes(pickle.dumps(batch, protocol=protocol))
    return folder


def write_cub(root: Path) -> Path:
    """``CUB_200_2011/`` with 3 classes, 2 images each (first train, second test)."""
    folder = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split = [], [], []
    for c, name in enumerate(classes, start=1):
        for k in range(2):
            image_id = len(images) + 1
            rel = f"{name}/{name.split('.')[1]}_{k:04d}_{image_id}.jpg"
            write_jpeg(folder / "images" / rel, seed=image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {1 - k}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (folder / "classes.txt").write_text("\n".join(f"{i} {n}" for i, n in enumerate(classes, start=1)) + "\n")
    return folder


NABIRDS_LEAVES = {"1010": "Yellow-rumped Warbler (Myrtle)", "295": "Bewick's Wren", "817": "Snowy Egret"}


def write_nabirds(root: Path) -> Path:
    """``nabirds/`` with a taxonomy in classes.txt, three leaf classes (ids 295, 817, 1010) and UUID image ids."""
    folder = root / "nabirds"
    taxonomy = {"0": "Birds", "1": "Perching Birds", **NABIRDS_LEAVES}
    images, labels, split = [], [], []
    for n, class_id in enumerate(["817", "1010", "295", "817", "1010", "295"]):
        uuid = f"{n:08x}-21dc-4d0c-bfe1-4cae3c85c829"
        rel = f"{int(class_id):04d}/{uuid.replace('-', '')}.jpg"
        write_jpeg(folder / "images" / rel, seed=n)
        images.append(f"{uuid} {rel}")
        labels.append(f"{uuid} {class_id}")
        split.append(f"{uuid} {int(n < 3)}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (folder / "classes.txt").write_text("\n".join(f"{k} {v}" for k, v in taxonomy.items()) + "\n")
    (folder / "hierarchy.txt").write_text("1 0\n295 1\n817 0\n1010 1\n")
    return folder


def write_flowers102(root: Path) -> Path:
    """``jpg/image_0000N.jpg`` x6 with ``imagelabels.mat`` (1-based labels) and ``setid.mat`` (1-based ids)."""
    from scipy.io import savemat

    for i in range(1, 7):
        write_jpeg(root / "jpg" / f"image_{i:05d}.jpg", seed=i)
    savemat(root / "imagelabels.mat", {"labels": np.array([[1, 2, 1, 102, 2, 102]], dtype=np.uint8)})
    savemat(root / "setid.mat", {"trnid": np.array([[2, 1]]), "valid": np.array([[4, 5]]), "tstid": np.array([[3, 6]])})
    return root


CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]


def _car_annotations(classes: list[int]) -> np.ndarray:
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    annotations = np.zeros((1, len(classes)), dtype=[(f, "O") for f in fields])
    for i, c in enumerate(classes):
        annotations[0, i] = (np.uint8(1), np.uint8(2), np.uint8(40), np.uint8(30), np.uint8(c), f"{i + 1:05d}.jpg")
    return annotations


def write_stanford_cars(root: Path, *, test_labels: bool = True) -> Path:
    """``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat``, ``cars_test_annos_withlabels.mat``, images."""
    from scipy.io import savemat

    (root / "devkit").mkdir(parents=True)
    names = np.empty((1, len(CAR_NAMES)), dtype=object)
    names[0, :] = CAR_NAMES
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": names})
    train, test = [3, 1, 2, 1], [2, 3]
    savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _car_annotations(train)})
    if test_labels:
        savemat(root / "cars_test_annos_withlabels.mat", {"annotations": _car_annotations(test)})
    for folder, count in (("cars_train", len(train)), ("cars_test", len(test))):
        for i in range(count):
            write_jpeg(root / folder / f"{i + 1:05d}.jpg", seed=i)
    return root


DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02116738-African_hunting_dog"]


def write_stanford_dogs(root: Path) -> Path:
    """``Images/<wnid>-<breed>/`` with ``train_list.mat`` / ``test_list.mat`` (cell arrays, 1-based labels)."""
    from scipy.io import savemat

    for split, per_class in (("train", 2), ("test", 1)):
        files, labels = [], []
        for label, folder in enumerate(DOG_FOLDERS, start=1):
            for k in range(per_class):
                rel = f"{folder}/{folder.split('-')[0]}_{split}{k}.jpg"
                write_jpeg(root / "Images" / rel, seed=label * 10 + k)
                files.append(rel)
                labels.append(label)
        cells = np.empty((len(files), 1), dtype=object)
        cells[:, 0] = files
        savemat(
            root / f"{split}_list.mat",
            {"file_list": cells, "annotation_list": cells, "labels": np.array(labels, dtype=float)[:, None]},
        )
    return root


def write_fgvc_json(root: Path) -> Path:
    """VPT-style ``train.json`` / ``val.json`` / ``test.json`` next to ``images/<NNN.Class>/``."""
    splits: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for class_id, name in ((1, "001.Black_footed_Albatross"), (2, "002.Laysan_Albatross"), (5, "005.Crested_Auklet")):
        for k, split in enumerate(("train", "train", "val", "test")):
            rel = f"{name}/img_{k}.jpg"
            write_jpeg(root / "images" / rel, seed=class_id * 10 + k)
            splits[split][rel] = class_id
    for split, mapping in splits.items():
        (root / f"{split}.json").write_text(json.dumps(mapping))
    return root
