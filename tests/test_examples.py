"""``examples/train.py``: a thin script over the same options and training loop, run as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.training import make_imagefolder, make_tiny_vit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random ViT and a tiny image folder with train/validation/test splits."""
    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_vit(root / "vit"), make_imagefolder(
        root / "colours", per_class={"train": 8, "validation": 2, "test": 4}
    )


@pytest.mark.slow  # a fresh interpreter imports torch, transformers and peft
def test_example_script_trains_and_saves(tiny, tmp_path):
    tiny_vit, tiny_data = tiny
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(EXAMPLE),
        "--model",
        str(tiny_vit),
        "--dataset",
        str(tiny_data),
        "--output_dir",
        str(out),
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "1e-2",
        "--eval_steps",
        "3",
        "--disable_tqdm",
    ]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    wall = time.time() - started
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # A script's start-up counts from its process start (imports included), so the run's phases fit the subprocess.
    phases = metrics["phases"]
    assert sum(v for k, v in phases.items() if k != "total_s") == pytest.approx(phases["total_s"], rel=0.02)
    assert phases["startup_s"] > 0 and phases["total_s"] <= wall
    assert f"Done in {phases['total_s']:.1f} s: startup {phases['startup_s']:.1f}, " in result.stdout
    assert f"test top-1 accuracy: {metrics['test']['top1_accuracy']:.4f}" in result.stdout
    assert metrics["num_processes"] == 1 and metrics["total_steps"] == 6
    assert (out / "adapter_model.safetensors").is_file() and (out / "training_curves.png").is_file()
    assert f"python {EXAMPLE} --model {tiny_vit}" in (out / "README.md").read_text()


MAIN_JOB = Path(__file__).resolve().parents[1] / "examples" / "offline_main_job.py"


@pytest.mark.slow
def test_offline_main_job_end_to_end(real_backbone, tmp_path):
    """README's main job at toy scale: default backbone from PyPI, Fashion-MNIST from Debian, stock pipeline.

    The backbone comes from the cache that the real_backbone fixture built from the wheel (the conversion itself is
    tested in tests/test_offline_backbone.py), not from the user's cache."""
    from peft_vision_lora.offline.backbone import CACHE_ENV
    from peft_vision_lora.offline.fashion_mnist import DEBIAN_DIR

    pytest.importorskip("onnxruntime", reason="the default backbone needs the [onnx] extra")
    if not DEBIAN_DIR.is_dir():
        pytest.skip(f"{DEBIAN_DIR} missing: apt-get install dataset-fashion-mnist (make test does)")
    out = tmp_path / "main-job"
    flags = ["--per_class_train", "4", "--per_class_test", "2", "--num_examples", "3", "--max_steps", "2"]
    command = [sys.executable, str(MAIN_JOB), "--output_dir", str(out), "--image_size", "28", *flags, "--disable_tqdm"]
    env = {**os.environ, CACHE_ENV: str(real_backbone[0].parent)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"Fashion-MNIST test top-1 {metrics['test']['top1_accuracy']:.4f}" in result.stdout
    predictions = [line for line in result.stdout.splitlines() if line.startswith("test-")]
    assert len(predictions) == 3 and all("predicted" in line for line in predictions)
    names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}
    assert all(any(name in line.split("predicted")[1] for name in names) for line in predictions)
    card = (out / "README.md").read_text()
    assert "examples/offline_main_job.py" in card and "vit-small-patch14-dinov2-imgfocus" in card
