"""Each supported layout, read from a tiny synthetic copy of its real file structure."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from helpers.layouts import (
    CAR_NAMES,
    NABIRDS_LEAVES,
    photo,
    write_cifar100,
    write_cub,
    write_fgvc_json,
    write_flowers102,
    write_jpeg,
    write_nabirds,
    write_stanford_cars,
    write_stanford_dogs,
)
from PIL import Image

from peft_vision_lora.data import FLOWERS102_CLASSES, LayoutError, load_image_dataset
from peft_vision_lora.data import layouts as layouts_module
from peft_vision_lora.data.layouts import load_array_pickle, read_source

pytest.importorskip("scipy")


def _rows(ds: Dataset) -> list[tuple[str, str]]:
    """(file name, class name) of every row, images left undecoded."""
    names = ds.features["label"].names
    undecoded = ds.cast_column("image", ImageFeature(decode=False))
    return [(os.path.basename(r["image"]["path"]), names[r["label"]]) for r in undecoded]


def test_cifar100_python_pickles(tmp_path):
    write_cifar100(tmp_path)
    data, fmt = read_source(tmp_path)
    assert fmt == "cifar100" and list(data) == ["train", "test"]
    assert data["train"].features["label"].names == ["apple", "aquarium_fish", "baby"]
    assert data["train"]["label"][:4] == [0, 1, 2, 0] and len(data["test"]) == 4
    # Pixels survive the trip: row-major CHW planes in the pickle, an RGB image in the dataset.
    raw = load_array_pickle(tmp_path / "cifar-100-python" / "train")["data"][1]
    image = data["train"][1]["image"]
    assert image.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(image), raw.reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar100_with_str_keys_and_protocol_5(tmp_path):
    folder = write_cifar100(tmp_path, protocol=5, bytes_keys=False)
    data = load_image_dataset(folder)
    assert len(data["train"]) == 6 and data["test"].features["label"].num_classes == 3


class _Exploit:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_cifar_pickles_are_never_trusted(tmp_path, monkeypatch):
    folder = write_cifar100(tmp_path)
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [_Exploit()]}, protocol=2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LayoutError, match=r"meta: refusing to unpickle (posix|nt)\.system"):
        load_image_dataset(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cub200(tmp_path):
    write_cub(tmp_path)
    data = load_image_dataset(tmp_path)
    names = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert data["train"].features["label"].names == names
    assert [c for _, c in _rows(data["train"])] == names and [c for _, c in _rows(data["test"])] == names
    assert _rows(data["test"])[0] == ("Black_footed_Albatross_0001_2.jpg", "Black_footed_Albatross")


def test_cub200_missing_entry_names_the_file(tmp_path):
    folder = write_cub(tmp_path)
    lines = (folder / "train_test_split.txt").read_text().splitlines()
    (folder / "train_test_split.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(LayoutError, match=r"train_test_split.txt: no entry for image id 6"):
        load_image_dataset(folder)


def test_nabirds_uses_its_own_class_ids_in_numeric_order(tmp_path):
    write_nabirds(tmp_path)
    data, fmt = read_source(tmp_path)
    assert fmt == "nabirds"
    # Only the classes with images are labels, ordered by id as numbers (295 < 817 < 1010), named from classes.txt.
    assert data["train"].features["label"].names == [NABIRDS_LEAVES[k] for k in ("295", "817", "1010")]
    assert [c for _, c in _rows(data["train"])] == ["Snowy Egret", "Yellow-rumped Warbler (Myrtle)", "Bewick's Wren"]
    assert len(data["test"]) == 3


def test_flowers102_mat_files(tmp_path):
    write_flowers102(tmp_path)
    data, fmt = read_source(tmp_path)
    assert fmt == "flowers102" and list(data) == ["train", "validation", "test"]
    assert data["train"].features["label"].names == list(FLOWERS102_CLASSES) and len(FLOWERS102_CLASSES) == 102
    assert _rows(data["train"]) == [
        ("image_00001.jpg", "pink primrose"),
        ("image_00002.jpg", "hard-leaved pocket orchid"),
    ]
    assert _rows(data["validation"]) == [
        ("image_00004.jpg", "blackberry lily"),
        ("image_00005.jpg", "hard-leaved pocket orchid"),
    ]
    assert [c for _, c in _rows(data["test"])] == ["pink primrose", "blackberry lily"]


def test_stanford_cars_devkit(tmp_path):
    write_stanford_cars(tmp_path / "stanford_cars")
    data, fmt = read_source(tmp_path)
    assert fmt == "stanford_cars"
    assert data["train"].features["label"].names == CAR_NAMES
    assert [c for _, c in _rows(data["train"])] == [CAR_NAMES[i] for i in (2, 0, 1, 0)]
    assert _rows(data["test"]) == [("00001.jpg", CAR_NAMES[1]), ("00002.jpg", CAR_NAMES[2])]
    assert data["test"][0]["image"].size == (48, 40)


def test_stanford_cars_without_test_labels_gives_train_only(tmp_path, caplog):
    write_stanford_cars(tmp_path, test_labels=False)
    data = load_image_dataset(tmp_path)
    assert list(data) == ["train"]
    assert "cars_test_annos_withlabels.mat" in caplog.text


def test_stanford_dogs(tmp_path):
    write_stanford_dogs(tmp_path)
    data, fmt = read_source(tmp_path)
    assert fmt == "stanford_dogs"
    assert data["train"].features["label"].names == ["Chihuahua", "Japanese_spaniel", "African_hunting_dog"]
    assert len(data["train"]) == 6 and len(data["test"]) == 3
    assert _rows(data["test"])[2] == ("n02116738_test0.jpg", "African_hunting_dog")


def test_fgvc_json_splits(tmp_path):
    write_fgvc_json(tmp_path)
    data, fmt = read_source(tmp_path)
    assert fmt == "fgvc_json" and list(data) == ["train", "validation", "test"]
    # Label ids 1, 2, 5 become 0, 1, 2; names come from the class folders.
    assert data["train"].features["label"].names == ["Black_footed_Albatross", "Laysan_Albatross", "Crested_Auklet"]
    assert data["train"]["label"] == [0, 0, 1, 1, 2, 2] and data["test"]["label"] == [0, 1, 2]


def test_fgvc_json_with_missing_images_names_the_entry(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps({"a/missing.jpg": 1}))
    (tmp_path / "test.json").write_text(json.dumps({}))
    with pytest.raises(LayoutError, match="'a/missing.jpg'"):
        load_image_dataset(tmp_path)


def _cifar_like(n: int, offset: int = 0) -> Dataset:
    features = Features(
        {
            "img": ImageFeature(),
            "fine_label": ClassLabel(names=["apple", "bee", "cup"]),
            "coarse_label": ClassLabel(names=["fruit", "insect"]),
        }
    )
    return Dataset.from_dict(
        {
            "img": [photo(8, 8, seed=offset + i) for i in range(n)],
            "fine_label": [i % 3 for i in range(n)],
            "coarse_label": [0] * n,
        },
        features=features,
    )


def test_saved_dataset_columns_are_found_by_feature(tmp_path):
    DatasetDict({"train": _cifar_like(6), "test": _cifar_like(3, 10)}).save_to_disk(tmp_path / "saved")
    data, fmt = read_source(tmp_path / "saved")
    assert fmt == "saved" and data["train"].column_names == ["image", "label"]
    assert data["train"].features["label"].names == ["apple", "bee", "cup"]  # the fine labels, not the coarse
    assert data["test"][0]["image"].size == (8, 8)


def test_hub_id_goes_through_load_dataset(monkeypatch):
    monkeypatch.setattr(layouts_module, "load_dataset", lambda name: DatasetDict({"train": _cifar_like(3)}))
    data, fmt = read_source("uoft-cs/cifar100")
    assert fmt == "hub" and data["train"].column_names == ["image", "label"]


def test_in_memory_dataset_with_string_labels_and_val_split():
    features = Features({"picture": ImageFeature(), "category": Value("string")})
    split = Dataset.from_dict(
        {"picture": [photo(8, 8, i) for i in range(4)], "category": ["dog", "cat", "dog", "ant"]}, features=features
    )
    data = load_image_dataset(DatasetDict({"train": split, "val": split.select([0, 1])}))
    assert list(data) == ["train", "validation"]
    assert data["train"].features["label"].names == ["ant", "cat", "dog"]
    assert data["train"]["label"] == [2, 1, 2, 0] and data["validation"]["label"] == [2, 1]


def test_dataset_without_a_label_column_is_named(tmp_path):
    only_images = Dataset.from_dict({"image": [photo(8, 8)]}, features=Features({"image": ImageFeature()}))
    with pytest.raises(LayoutError, match=r"no label column found among \['image'\]"):
        load_image_dataset(only_images)


def test_explicit_format_mismatch_and_missing_paths(tmp_path):
    write_jpeg(tmp_path / "cat" / "a.jpg")
    with pytest.raises(LayoutError, match="does not look like CUB-200-2011"):
        load_image_dataset(tmp_path, format="cub200")
    with pytest.raises(ValueError, match="Unknown dataset format 'cub'"):
        load_image_dataset(tmp_path, format="cub")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_dataset(str(tmp_path / "nope" / "data"))
    Image.new("RGB", (4, 4)).save(tmp_path / "file.png")
    with pytest.raises(NotADirectoryError):
        load_image_dataset(tmp_path / "file.png")
