"""Fixtures of the training tests: a tiny random ViT, a tiny learnable image folder, a clean Accelerate state."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from helpers.training import make_imagefolder, make_tiny_vit


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_vit(tmp_path_factory.mktemp("tiny-vit") / "vit")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 train / 6 validation / 12 test images of 3 colour classes."""
    return make_imagefolder(
        tmp_path_factory.mktemp("tiny-data") / "colours", per_class={"train": 8, "validation": 2, "test": 4}
    )


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each in-process training run starts from a clean slate."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
