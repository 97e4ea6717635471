"""ImageTransforms: output format, normalisation, seeding, processor parity, failure handling; Mixup/CutMix."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from helpers.layouts import FLOWERS12, SHARED, write_jpeg
from PIL import Image
from transformers import CLIPImageProcessorPil, ViTImageProcessorPil

from peft_vision_lora.data import (
    ImageTransforms,
    MixupCutmix,
    Preprocessing,
    load_image_dataset,
    normalize_on_device,
    random_resized_crop_box,
)
from peft_vision_lora.processing import IMAGENET_MEAN, IMAGENET_STD

SIZES = [(500, 375), (375, 500), (333, 251), (511, 383), (301, 457), (640, 480), (224, 224), (97, 61), (7, 5)]
MODEL = SHARED / "models" / "vit-small-patch14-dinov2-imgfocus"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """JPEGs of varied sizes (landscape, portrait, odd, tiny), labelled 0..n-1."""
    root = tmp_path_factory.mktemp("photos")
    return [str(write_jpeg(root / f"{i}.jpg", w, h, seed=i)) for i, (w, h) in enumerate(SIZES)]


def _dataset(paths: list[str]) -> Dataset:
    features = Features({"image": ImageFeature(), "label": ClassLabel(num_classes=len(paths))})
    return Dataset.from_dict({"image": paths, "label": list(range(len(paths)))}, features=features)


def _grey_levels(pixel_values: torch.Tensor, mean, std) -> torch.Tensor:
    return (pixel_values * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)) * 255


@pytest.mark.parametrize(
    "processor",
    [
        ViTImageProcessorPil(size={"height": 224, "width": 224}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        CLIPImageProcessorPil(
            size={"shortest_edge": 256},
            crop_size={"height": 224, "width": 224},
            resample=3,
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
        ),
        CLIPImageProcessorPil(
            size={"shortest_edge": 160},
            crop_size={"height": 128, "width": 144},
            resample=2,
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
        ),
        ViTImageProcessorPil(
            size={"height": 256, "width": 256}, do_center_crop=True, crop_size={"height": 224, "width": 224}, resample=3
        ),
    ],
    ids=["vit-resize", "short-side-crop", "non-square-crop", "deit-resize-crop"],
)
def test_eval_matches_the_model_processor_within_one_grey_level(photos, processor):
    transforms = ImageTransforms.from_processor(processor, train=False)
    ours = transforms.attach(_dataset(photos))[: len(photos)]["pixel_values"]
    theirs = processor([Image.open(p) for p in photos], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape and ours.dtype == torch.float32
    diff = _grey_levels(ours, transforms.mean, transforms.std) - _grey_levels(theirs, transforms.mean, transforms.std)
    assert diff.abs().max() <= 1.0 + 1e-3


@pytest.mark.shared
@pytest.mark.skipif(not (MODEL.is_dir() and FLOWERS12.is_dir()), reason=f"needs the shared model and data in {SHARED}")
def test_from_pretrained_eval_matches_load_image_processor_on_flowers12():
    from peft_vision_lora.processing import load_image_processor

    processor = load_image_processor(MODEL)
    transforms = ImageTransforms.from_pretrained(MODEL, train=False)
    test = load_image_dataset(FLOWERS12)["test"].select(range(0, 240, 15))
    ours = transforms.attach(test)[:16]
    theirs = processor([row["image"] for row in test], return_tensors="pt")["pixel_values"]
    assert ours["labels"].tolist() == test["label"]
    diff = _grey_levels(ours["pixel_values"], transforms.mean, transforms.std) - _grey_levels(
        theirs, transforms.mean, transforms.std
    )
    assert diff.abs().max() <= 1.0 + 1e-3


def test_from_pretrained_reads_the_processor_or_the_architecture_table(tmp_path):
    from transformers import Dinov2Config

    Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path
    )
    table = ImageTransforms.from_pretrained(tmp_path, train=True, hflip=0.0).preprocessing
    assert table == Preprocessing(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, resample=3, crop_pct=0.875)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "size": {"height": 384, "width": 384},
                "resample": 2,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "do_resize": True,
                "do_normalize": True,
            }
        )
    )
    own = ImageTransforms.from_pretrained(tmp_path).preprocessing
    assert own == Preprocessing(size=(384, 384), mean=(0.5,) * 3, std=(0.5,) * 3, resample=2, crop_pct=None)


def test_output_shapes_dtypes_and_normalisation(photos):
    pre = Preprocessing(size=(32, 48), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    dataset = _dataset(photos)
    for train in (False, True):
        as_float = ImageTransforms(pre, train).attach(dataset)[:4]
        as_uint8 = ImageTransforms(pre, train, options=_opts(output="uint8")).attach(dataset)[:4]
        assert as_float["pixel_values"].shape == (4, 3, 32, 48) and as_float["pixel_values"].dtype == torch.float32
        assert as_uint8["pixel_values"].dtype == torch.uint8 and as_float["labels"].dtype == torch.int64
        assert as_float["labels"].tolist() == [0, 1, 2, 3]
        renormalised = normalize_on_device(as_uint8["pixel_values"], pre.mean, pre.std)
        torch.testing.assert_close(renormalised, as_float["pixel_values"])
    empty = ImageTransforms(pre)({"image": [], "label": []})
    assert empty["pixel_values"].shape == (0, 3, 32, 48) and empty["labels"].shape == (0,)
    grey = ImageTransforms(pre)({"image": [np.full((10, 10, 3), 51, dtype=np.uint8)]})
    assert set(grey) == {"pixel_values"}  # no label column, no labels
    expected = (torch.tensor([51 / 255] * 3) - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    torch.testing.assert_close(grey["pixel_values"][0, :, 16, 24], expected)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_float_output_is_the_uint8_output_normalised_whatever_the_threads(photos, train):
    pre = Preprocessing(size=(40, 56), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    dataset = _dataset(photos)
    one = ImageTransforms(pre, train, options=_opts(num_threads=1)).attach(dataset)[: len(photos)]["pixel_values"]
    three = ImageTransforms(pre, train, options=_opts(num_threads=3)).attach(dataset)[: len(photos)]["pixel_values"]
    as_uint8 = ImageTransforms(pre, train, options=_opts(output="uint8")).attach(dataset)[: len(photos)]
    assert one.is_contiguous() and torch.equal(one, three)
    # Same float32 operations on the host and on the device: identical values, not merely close ones.
    assert torch.equal(normalize_on_device(as_uint8["pixel_values"], pre.mean, pre.std), one)


def _opts(**kwargs):
    from peft_vision_lora.data import TransformOptions

    return TransformOptions(**kwargs)


def test_train_augmentations_are_seeded_per_sample_and_epoch(photos):
    pre = Preprocessing(size=(24, 24))
    train = ImageTransforms(pre, train=True, options=_opts(seed=7, auto_augment="rand"))
    dataset = train.attach(_dataset(photos))
    whole = dataset[:4]["pixel_values"]
    assert torch.equal(whole, dataset[:4]["pixel_values"])
    # A sample's augmentation does not depend on the batch it is in (DataLoader batching, resumed runs).
    assert torch.equal(whole[2], dataset[2]["pixel_values"])
    # The index column travels with the rows: a shuffled or subset dataset keeps each sample's augmentation.
    assert torch.equal(whole[[2, 1]], dataset.select([2, 1])[:2]["pixel_values"])
    train.set_epoch(1)
    assert train.epoch == 1 and not torch.equal(whole, dataset[:4]["pixel_values"])
    train.set_epoch(0)
    assert torch.equal(whole, dataset[:4]["pixel_values"])
    other_seed = ImageTransforms(pre, train=True, options=_opts(seed=8, auto_augment="rand"))
    assert not torch.equal(whole, other_seed.attach(_dataset(photos))[:4]["pixel_values"])
    # Eval has no randomness at all.
    evaluate = ImageTransforms(pre)
    dataset = evaluate.attach(_dataset(photos))
    before = dataset[:3]["pixel_values"]
    evaluate.set_epoch(5)
    assert torch.equal(before, dataset[:3]["pixel_values"])


def test_without_an_index_column_samples_are_keyed_by_path(photos):
    train = ImageTransforms(Preprocessing(size=(24, 24)), train=True)
    batch = {"image": [{"path": p, "bytes": None} for p in photos[:3]], "label": [0, 1, 2]}
    first = train(batch)["pixel_values"]
    reordered = train({"image": batch["image"][::-1], "label": [2, 1, 0]})["pixel_values"]
    assert torch.equal(first, reordered.flip(0))


def test_set_epoch_reaches_persistent_dataloader_workers(photos):
    train = ImageTransforms(Preprocessing(size=(16, 16)), train=True)
    dataset = train.attach(_dataset(photos[:4]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1, persistent_workers=True)
    epochs = []
    for epoch in range(2):
        train.set_epoch(epoch)
        epochs.append(next(iter(loader))["pixel_values"])
        assert torch.equal(epochs[-1], dataset[:4]["pixel_values"])
    assert not torch.equal(epochs[0], epochs[1])


@pytest.mark.parametrize("policy", ["rand", "trivial"])
def test_auto_augment_policies_change_pixels_deterministically(photos, policy):
    pre = Preprocessing(size=(32, 32))
    plain = ImageTransforms(pre, train=True).attach(_dataset(photos))[:6]["pixel_values"]
    augmented = ImageTransforms(pre, train=True, options=_opts(auto_augment=policy)).attach(_dataset(photos))
    once, twice = augmented[:6]["pixel_values"], augmented[:6]["pixel_values"]
    assert torch.equal(once, twice) and not torch.equal(once, plain)
    assert torch.isfinite(once).all()


def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0, x1, y1 = random_resized_crop_box(rng, 400, 300, (0.25, 0.5), (0.5, 2.0))
        assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 300
        assert 0.24 <= (x1 - x0) * (y1 - y0) / (400 * 300) <= 0.51
    assert random_resized_crop_box(rng, 1000, 10, (0.9, 1.0), (1.0, 1.0)) == (495.0, 0.0, 505.0, 10.0)


def test_reduced_decoding_is_used_for_training_only_and_stays_close(tmp_path):
    path = str(write_jpeg(tmp_path / "large.jpg", 1200, 896))  # whole 8x8 blocks: the 1/8 grid fits the crop
    pre = Preprocessing(size=(112, 112))
    batch = {"image": [{"path": path, "bytes": None}], "index": [0]}
    whole = {"min_crop_scale": 1.0, "ratio": (0.5, 2.0), "hflip": 0.0}  # the crop is the whole image
    fast = ImageTransforms(pre, train=True, options=_opts(**whole))(batch)["pixel_values"]
    exact = ImageTransforms(pre, train=True, options=_opts(**whole, reduced_decode=False))(batch)
    assert not torch.equal(fast, exact["pixel_values"])
    # Decoded at 1/8 scale (DCT block averages) then resized: a slightly different blur, never a different crop.
    assert (fast - exact["pixel_values"]).abs().mean() * 0.226 * 255 < 8
    # At eval it is opt-in.
    exact_eval = ImageTransforms(pre)(batch)["pixel_values"]
    fast_eval = ImageTransforms(pre, options=_opts(reduced_decode=True))(batch)["pixel_values"]
    assert not torch.equal(fast_eval, exact_eval) and (fast_eval - exact_eval).abs().mean() * 0.226 * 255 < 8


def test_decoding_failures_in_the_transform_never_crash(tmp_path, caplog):
    good = [str(write_jpeg(tmp_path / f"{i}.jpg", 40, 30, seed=i)) for i in range(3)]
    data = write_jpeg(tmp_path / "full.jpg", 200, 160).read_bytes()
    (tmp_path / "bad.jpg").write_bytes(data[: len(data) // 3])
    paths = [good[0], str(tmp_path / "bad.jpg"), good[1], good[2]]
    dataset = load_image_dataset(_dataset(paths), on_bad_image="keep")["train"]
    transforms = ImageTransforms(Preprocessing(size=(16, 16)))
    attached = transforms.attach(dataset)
    with caplog.at_level(logging.WARNING):
        batch = attached[:4]
        attached[:4]
    # The bad sample is replaced by its nearest readable neighbour, image and label.
    assert batch["labels"].tolist() == [0, 0, 2, 3]
    assert torch.equal(batch["pixel_values"][1], batch["pixel_values"][0])
    assert sum("bad.jpg" in r.getMessage() for r in caplog.records) == 1  # reported once
    alone = attached[1]  # no neighbour in the batch: the last good sample stands in
    assert alone["labels"].item() == 3 and torch.equal(alone["pixel_values"], batch["pixel_values"][3])
    fresh = ImageTransforms(Preprocessing(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)).attach(dataset)[1]
    assert fresh["labels"].item() == 1 and fresh["pixel_values"].abs().max() < 0.01  # mean colour


def test_option_errors_name_the_option():
    with pytest.raises(TypeError, match=r"Unknown transform option\(s\) \['flip'\]"):
        ImageTransforms.from_processor(ViTImageProcessorPil(), flip=0.5)
    with pytest.raises(ValueError, match="--min_crop_scale"):
        _opts(min_crop_scale=0.0)
    with pytest.raises(ValueError, match="--magnitude"):
        _opts(magnitude=31)
    with pytest.raises(ValueError, match="auto_augment"):
        _opts(auto_augment="auto")
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocessing(crop_pct=1.5)
    with pytest.raises(KeyError, match="'img'"):
        ImageTransforms(Preprocessing(), options=_opts(image_column="img")).attach(_dataset([]))


def _examples(n: int = 6, classes: int = 4, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 3, 16, 16), generator=generator).to(dtype)
    return [{"pixel_values": pixels[i], "labels": torch.tensor(i % classes)} for i in range(n)]


@pytest.mark.parametrize("mode", [{"cutmix_alpha": 0.0}, {"mixup_alpha": 0.0}], ids=["mixup", "cutmix"])
def test_mixup_cutmix_collate(mode):
    collate = MixupCutmix(num_classes=4, label_smoothing=0.1, **mode)
    examples = _examples()
    batch = collate(examples)
    assert batch["pixel_values"].shape == (6, 3, 16, 16) and batch["labels"].shape == (6, 4)
    torch.testing.assert_close(batch["labels"].sum(1), torch.ones(6))
    assert batch["labels"].min() >= 0.1 / 4 - 1e-6
    assert not torch.equal(batch["pixel_values"], torch.stack([e["pixel_values"] for e in examples]))
    again = collate(examples)
    assert torch.equal(batch["pixel_values"], again["pixel_values"]) and torch.equal(batch["labels"], again["labels"])
    collate.set_epoch(1)
    assert not torch.equal(batch["labels"], collate(examples)["labels"])


def test_cutmix_label_weights_match_the_pasted_area():
    collate = MixupCutmix(num_classes=6, mixup_alpha=0.0, label_smoothing=0.0)
    examples = _examples(n=2, classes=6)
    batch = collate(examples)
    pasted = (batch["pixel_values"][0] != examples[0]["pixel_values"]).any(0).float().mean()
    assert batch["labels"][0, 1].item() == pytest.approx(pasted.item(), abs=1e-6)


def test_mixup_on_uint8_keeps_uint8():
    batch = MixupCutmix(num_classes=4, cutmix_alpha=0.0)(_examples(dtype=torch.uint8))
    assert batch["pixel_values"].dtype == torch.uint8


def test_mixup_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"labels \[5\] are outside 0..3"):
        MixupCutmix(num_classes=4)([{"pixel_values": torch.zeros(3, 4, 4), "labels": 5}])
