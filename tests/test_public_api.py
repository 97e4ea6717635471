"""The public API: a curated list of names, each importable; the training stack loads only on first use."""

import subprocess
import sys

import pytest

import peft_vision_lora as pvl

PUBLIC = {
    # registration and the architecture table
    "ARCHITECTURES",
    "PRESETS",
    "get_architecture",
    "register",
    "resolve_target_modules",
    "supported_model_types",
    # build, load, save, merge, serve
    "MultiAdapterClassifier",
    "VisionLoraConfig",
    "VisionLoraForImageClassification",
    "build_classifier",
    "build_model",
    "export_onnx",
    "load_image_processor",
    "load_model",
    "merge_adapter",
    "save_pretrained",
    # data
    "ImageTransforms",
    "load_image_dataset",
    "write_shards",
    # train, evaluate, share
    "DataArguments",
    "HubPushError",
    "ModelArguments",
    "NonFiniteLossError",
    "TrainingArguments",
    "evaluate_folder",
    "parse_args",
    "push_to_hub",
    "train",
}


def test_public_names_are_pinned_and_resolve():
    assert set(pvl.__all__) == PUBLIC
    assert len(pvl.__all__) == len(PUBLIC)  # no name listed twice
    for name in pvl.__all__:
        assert getattr(pvl, name) is not None, name


def test_plumbing_lives_in_submodules():
    from peft_vision_lora.data import MixupCutmix, TransformOptions, normalize_on_device
    from peft_vision_lora.offline import ensure_default_backbone, load_fashion_mnist

    assert all(callable(f) for f in (MixupCutmix, TransformOptions, normalize_on_device))
    assert all(callable(f) for f in (ensure_default_backbone, load_fashion_mnist))
    for name in ("normalize_on_device", "TransformOptions", "load_fashion_mnist", "ensure_default_backbone"):
        assert not hasattr(pvl, name), name


@pytest.mark.slow  # a fresh interpreter
def test_import_does_not_load_the_training_stack():
    code = (
        "import sys, peft_vision_lora as pvl; "
        "print(sorted(m for m in ('evaluate', 'matplotlib', 'peft_vision_lora.training') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
