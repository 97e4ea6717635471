"""``load_image_dataset`` on image folders: the real flowers12 copy, junk-filled folders, validation and few-shot."""

from __future__ import annotations

import logging
import os
from collections import Counter

import numpy as np
import pytest
from datasets import Image as ImageFeature
from helpers.layouts import FLOWERS12, write_jpeg, write_junk_folder

from peft_vision_lora.data import BadImageError, ImageTransforms, Preprocessing, load_image_dataset


def _relative_paths(ds, root) -> list[str]:
    undecoded = ds.cast_column("image", ImageFeature(decode=False))["image"]
    return [os.path.relpath(v["path"], root) for v in undecoded]


@pytest.mark.shared
@pytest.mark.skipif(not FLOWERS12.is_dir(), reason=f"needs the shared flowers12 images at {FLOWERS12}")
def test_flowers12_imagefolder():
    data = load_image_dataset(FLOWERS12)
    assert list(data) == ["train", "test"]
    assert (len(data["train"]), len(data["test"])) == (720, 240)
    names = data["train"].features["label"].names
    assert names == sorted(os.listdir(FLOWERS12 / "train")) and len(names) == 12
    assert data["test"].features["label"] == data["train"].features["label"]
    assert Counter(data["train"]["label"]) == dict.fromkeys(range(12), 60)
    first = data["test"][0]
    assert first["image"].mode == "RGB" and first["image"].size == (224, 224) and names[first["label"]] == "bluebell"


def test_single_split_folder_is_train_with_sorted_class_names(tmp_path):
    for name in ("zebra", "Apple", "mango"):
        write_jpeg(tmp_path / name / "x.jpg")
    data = load_image_dataset(tmp_path)
    assert list(data) == ["train"]
    assert data["train"].features["label"].names == ["Apple", "mango", "zebra"]  # sorted, never shuffled


def test_junk_folder_skips_unreadable_files_and_reports_them_once(tmp_path, caplog):
    files = write_junk_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        data = load_image_dataset(tmp_path)
    kept = _relative_paths(data["train"], tmp_path) + _relative_paths(data["test"], tmp_path)
    assert sorted(kept) == sorted(files["good"])  # .DS_Store, Thumbs.db and ._ files are not even candidates
    skips = [r for r in caplog.records if "Skipped" in r.getMessage()]
    assert len(skips) == 1
    message = skips[0].getMessage()
    assert f"Skipped 5 unreadable image(s) of {tmp_path} (4 of 16 in train, 1 of 6 in test)" in message
    for name in files["bad"]:
        assert str(tmp_path / name) in message
    # Empty class folders are left out; a class present in one split only is a class of every split.
    assert data["train"].features["label"].names == ["bird", "cat", "dog"]
    assert data["test"].features["label"] == data["train"].features["label"]
    assert "empty" in caplog.text and "bird (none in train)" in caplog.text


def test_junk_folder_with_on_bad_image_error_names_the_first_bad_file(tmp_path):
    write_junk_folder(tmp_path)
    with pytest.raises(BadImageError) as info:
        load_image_dataset(tmp_path, on_bad_image="error")
    assert info.value.source == str(tmp_path / "train" / "cat" / "bomb.png")  # first in sorted order


def test_every_readable_junk_image_reaches_the_model_as_rgb(tmp_path):
    write_junk_folder(tmp_path)
    data = load_image_dataset(tmp_path)
    transforms = ImageTransforms(Preprocessing(size=(16, 16), crop_pct=None, mean=(0, 0, 0), std=(1, 1, 1)))
    train = transforms.attach(data["train"])
    batch = train[: len(train)]
    assert batch["pixel_values"].shape == (len(train), 3, 16, 16)
    paths = _relative_paths(data["train"], tmp_path)
    pixels = {p: batch["pixel_values"][i].permute(1, 2, 0).numpy() * 255 for i, p in enumerate(paths)}
    np.testing.assert_allclose(pixels["train/cat/alpha.png"][12, 8], [255, 255, 255], atol=1)  # transparent: white
    np.testing.assert_allclose(pixels["train/cat/alpha.png"][2, 8], [255, 0, 0], atol=1)
    np.testing.assert_allclose(pixels["train/cat/gray16.png"][8, 8], [128, 128, 128], atol=1)
    np.testing.assert_allclose(pixels["train/cat/one_pixel.png"][5, 5], [10, 20, 30], atol=1)
    assert pixels["train/cat/cmyk.jpg"][8, 8, 0] > 200 and pixels["train/cat/cmyk.jpg"][8, 8, 1] < 60
    rotated = pixels["train/cat/rotated.jpg"]  # upright: red top-left, green top-right, blue bottom-left
    assert rotated[2, 2].argmax() == 0 and rotated[2, 13].argmax() == 1 and rotated[13, 2].argmax() == 2


def test_on_bad_image_keep_does_not_scan(tmp_path):
    write_junk_folder(tmp_path)
    data = load_image_dataset(tmp_path, on_bad_image="keep")
    assert len(data["train"]) == 16


def _balanced_folder(root, counts: dict[str, int]):
    for name, count in counts.items():
        for i in range(count):
            write_jpeg(root / name / f"{i:03d}.jpg", 8, 8, seed=i)
    return root


def test_val_fraction_is_stratified_seeded_and_disjoint(tmp_path):
    _balanced_folder(tmp_path, {"a": 10, "b": 20, "c": 2, "d": 1})
    data = load_image_dataset(tmp_path, val_fraction=0.2, seed=3)
    assert list(data) == ["train", "validation"]
    assert Counter(data["validation"]["label"]) == {0: 2, 1: 4, 2: 1}  # d has one image: it stays in train
    train_paths, val_paths = _relative_paths(data["train"], tmp_path), _relative_paths(data["validation"], tmp_path)
    assert not set(train_paths) & set(val_paths) and len(train_paths) + len(val_paths) == 33
    again = load_image_dataset(tmp_path, val_fraction=0.2, seed=3)
    assert _relative_paths(again["validation"], tmp_path) == val_paths
    other = load_image_dataset(tmp_path, val_fraction=0.2, seed=4)
    assert _relative_paths(other["validation"], tmp_path) != val_paths


def test_same_seed_selects_the_same_images_on_every_machine(tmp_path):
    # Pinned selections: these only change if the documented selection algorithm changes.
    _balanced_folder(tmp_path, {"a": 10, "b": 10})
    data = load_image_dataset(tmp_path, val_fraction=0.2, shots=3, seed=0)
    assert _relative_paths(data["validation"], tmp_path) == ["a/002.jpg", "a/003.jpg", "b/001.jpg", "b/003.jpg"]
    assert _relative_paths(data["train"], tmp_path) == [
        "a/006.jpg",
        "a/007.jpg",
        "a/009.jpg",
        "b/004.jpg",
        "b/005.jpg",
        "b/009.jpg",
    ]


def test_shots_keeps_k_per_class_after_carving_validation(tmp_path, caplog):
    _balanced_folder(tmp_path, {"a": 10, "b": 6, "c": 2})
    with caplog.at_level(logging.WARNING):
        data = load_image_dataset(tmp_path, val_fraction=0.3, shots=4, seed=0)
    assert Counter(data["train"]["label"]) == {0: 4, 1: 4, 2: 1}
    assert Counter(data["validation"]["label"]) == {0: 3, 1: 2, 2: 1}
    assert "c (1)" in caplog.text
    full = load_image_dataset(tmp_path, val_fraction=0.3, seed=0)
    assert set(_relative_paths(data["train"], tmp_path)) <= set(_relative_paths(full["train"], tmp_path))


def test_official_validation_split_wins_over_val_fraction(tmp_path, caplog):
    for split in ("train", "val"):
        write_jpeg(tmp_path / split / "a" / "x.jpg")
    data = load_image_dataset(tmp_path, val_fraction=0.5)
    assert list(data) == ["train", "validation"] and len(data["train"]) == 1
    assert "has its own validation split" in caplog.text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"shots": 0}, "shots"),
        ({"on_bad_image": "ignore"}, "on_bad_image"),
        ({"seed": -1}, "seed"),
    ],
)
def test_argument_errors(tmp_path, kwargs, match):
    write_jpeg(tmp_path / "a" / "x.jpg")
    with pytest.raises(ValueError, match=match):
        load_image_dataset(tmp_path, **kwargs)


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="No images in"):
        load_image_dataset(tmp_path)
