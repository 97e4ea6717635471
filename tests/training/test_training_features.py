"""Linear probe on cached backbone features: the same head, metrics and saved model as running the backbone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from helpers.training import make_imagefolder, make_tiny_vit
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, ViTImageProcessor, pipeline

from peft_vision_lora.data import ImageTransforms, load_image_dataset
from peft_vision_lora.training import parse_args, train
from peft_vision_lora.training.checkpointing import list_checkpoints
from peft_vision_lora.training.data import eval_dataloader
from peft_vision_lora.training.features import FeatureClassifier, extract_features
from peft_vision_lora.training.model import head_module


@pytest.fixture(scope="module")
def exact_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT whose processor resizes straight to 32 px: on 32 px images eval and crop-free train transforms
    are both the identity, so the cached and uncached probes see the very same pixels."""
    folder = make_tiny_vit(tmp_path_factory.mktemp("exact-vit") / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data32") / "colours"
    return make_imagefolder(root, per_class={"train": 8, "validation": 2, "test": 4}, size=32)


def probe(model: Path, data: Path, out: Path, *flags: str) -> dict:
    common = ["--method", "linear", "--per_device_train_batch_size", "5", "--learning_rate", "5e-2"]
    argv = ["--model", str(model), "--dataset", str(data), "--output_dir", str(out), "--disable_tqdm", *common]
    return train(*parse_args([*argv, *flags]))


def test_features_are_the_head_input(exact_vit, data32):
    model = AutoModelForImageClassification.from_pretrained(exact_vit).eval()
    transforms = ImageTransforms.from_pretrained(exact_vit)
    test = load_image_dataset(data32)["test"]
    cached = extract_features(
        model, head_module(model), eval_dataloader(test, transforms, global_batch_size=5), Accelerator(cpu=True)
    )
    assert cached.features.shape == (12, 32) and cached.labels.tolist() == test["label"]
    pixel_values = transforms(test[:12])["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
        # For ViT the head input is the CLS token after the final layernorm.
        cls = model.vit.layernorm(model.vit(pixel_values=pixel_values).last_hidden_state)[:, 0]
        logits = FeatureClassifier(head_module(model))(cached.features).logits
    torch.testing.assert_close(cached.features, cls)
    torch.testing.assert_close(logits, expected)


def test_cached_probe_matches_the_uncached_probe_on_the_same_pixels(exact_vit, data32, tmp_path):
    # 3 epochs of 5 steps (--min_steps 0: not the default floor of 100 steps, which the uncached probe pays dearly).
    flags = ["--num_train_epochs", "3", "--min_steps", "0", "--min_crop_scale", "1", "--hflip", "0"]
    flags += ["--save_strategy", "no"]
    cached = probe(exact_vit, data32, tmp_path / "cached", *flags)
    uncached = probe(exact_vit, data32, tmp_path / "uncached", *flags, "--no_cache_features")

    assert "feature_cache_s" in cached["train"] and "feature_cache_s" not in uncached["train"]
    for split in ("eval", "test"):
        assert cached[split]["top1_accuracy"] == uncached[split]["top1_accuracy"]
        assert cached[split]["confusion_matrix"] == uncached[split]["confusion_matrix"]
        assert cached[split]["loss"] == pytest.approx(uncached[split]["loss"], rel=1e-4, abs=1e-6)
    assert cached["best_step"] == uncached["best_step"]
    assert cached["train"]["loss"] == pytest.approx(uncached["train"]["loss"], rel=1e-4)
    heads = [load_file(tmp_path / run / "model.safetensors") for run in ("cached", "uncached")]
    for name in ("classifier.weight", "classifier.bias"):
        torch.testing.assert_close(heads[0][name], heads[1][name], rtol=1e-4, atol=1e-6)


def test_cached_probe_saves_the_whole_classifier_with_its_trained_head(exact_vit, data32, tmp_path):
    out = tmp_path / "probe"
    metrics = probe(exact_vit, data32, out, "--num_train_epochs", "4")
    assert metrics["test"]["top1_accuracy"] >= 0.9  # colours are easy; chance is 1/3

    saved = AutoModelForImageClassification.from_pretrained(out)
    base = AutoModelForImageClassification.from_pretrained(exact_vit)
    torch.testing.assert_close(saved.vit.layers[0].attention.q_proj.weight, base.vit.layers[0].attention.q_proj.weight)
    assert saved.config.id2label == {0: "blue", 1: "green", 2: "red"}
    # The stock pipeline on the saved folder reproduces the test accuracy measured on cached features.
    classifier = pipeline("image-classification", model=str(out))
    images = sorted((data32 / "test").glob("*/*.png"))
    hits = [classifier(str(p), top_k=1)[0]["label"] == p.parent.name for p in images]
    assert sum(hits) / len(hits) == pytest.approx(metrics["test"]["top1_accuracy"])


def test_cached_probe_resumes_from_a_checkpoint_exactly(exact_vit, data32, tmp_path):
    flags = ["--max_steps", "8", "--save_steps", "4", "--eval_strategy", "no"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    probe(exact_vit, data32, whole, *flags)
    # An interrupted run: only its checkpoint at step 4 survives.
    (resumed / "checkpoints").mkdir(parents=True)
    checkpoint = list_checkpoints(whole)[-1]
    assert checkpoint.name == "checkpoint-4"
    shutil.copytree(checkpoint, resumed / "checkpoints" / checkpoint.name)
    probe(exact_vit, data32, resumed, *flags, "--resume_from_checkpoint", "latest")

    first, second = (load_file(run / "model.safetensors") for run in (whole, resumed))
    for name in ("classifier.weight", "classifier.bias"):
        torch.testing.assert_close(first[name], second[name])
    assert json.loads((resumed / "metrics.json").read_text())["total_steps"] == 8


def test_image_augmentation_trains_on_images(exact_vit, data32, tmp_path):
    metrics = probe(exact_vit, data32, tmp_path / "mixup", "--max_steps", "2", "--mixup_alpha", "0.2")
    assert "feature_cache_s" not in metrics["train"]
