"""Fixtures of the training tests: a tiny random ViT, a tiny learnable image folder, a clean Accelerate state."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from helpers.training import ONE_PROCESS_FLAGS, make_imagefolder, make_tiny_vit

from peft_vision_lora.training import parse_args, train


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_vit(tmp_path_factory.mktemp("tiny-vit") / "vit")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 train / 6 validation / 12 test images of 3 colour classes."""
    return make_imagefolder(
        tmp_path_factory.mktemp("tiny-data") / "colours", per_class={"train": 8, "validation": 2, "test": 4}
    )


@pytest.fixture(scope="session")
def one_process_run(tiny_vit: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One in-process run of ``ONE_PROCESS_FLAGS`` at batch 4 (bf16 off, as the launchers' --mixed_precision no):
    its folder and metrics, shared read-only by the distributed tests."""
    out = tmp_path_factory.mktemp("one-process") / "one"
    model = ["--model", str(tiny_vit), "--dataset", str(tiny_data)]
    flags = [*model, *ONE_PROCESS_FLAGS, "--per_device_train_batch_size", "4", "--bf16", "false"]
    try:
        metrics = train(*parse_args([*flags, "--output_dir", str(out)]))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return out, metrics


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each in-process training run starts from a clean slate."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
