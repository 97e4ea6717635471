"""Shared fixtures: tiny random checkpoints of every supported family, written to tmp dirs, and the ../shared assets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from peft_vision_lora.testing import TINY_MODELS, make_tiny

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_VIT = SHARED / "models" / "vit-small-patch14-dinov2-imgfocus"
FLOWERS12 = SHARED / "data" / "flowers12"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the real ViT-S/14 is ``slow``: the quick tier (``-m "not slow"``) never loads a real backbone."""
    for item in items:
        if "shared_vit" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {name: make_tiny(name, root / name) for name in TINY_MODELS}


@pytest.fixture
def pixel_values() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def shared_vit() -> Path:
    if not (SHARED_VIT / "model.safetensors").is_file():
        pytest.skip(f"real ViT-S/14 not found at {SHARED_VIT} (../shared is absent)")
    return SHARED_VIT


@pytest.fixture(scope="session")
def flowers12() -> Path:
    if not (FLOWERS12 / "train").is_dir():
        pytest.skip(f"flowers12 not found at {FLOWERS12} (../shared is absent)")
    return FLOWERS12


@pytest.fixture(params=[0o022, 0o027], ids=oct)
def umask(request: pytest.FixtureRequest):
    """Run the test under umask 0o022, then 0o027; the process's own umask is restored afterwards."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.fixture
def assert_umask_modes(umask: int) -> Callable[[Path], None]:
    """Check that a folder and everything under it has the modes the umask gives new files and folders."""

    def check(root: Path) -> None:
        paths = [root, *root.rglob("*")]
        found = {str(p.relative_to(root)): oct(p.stat().st_mode & 0o777) for p in paths}
        expected = {str(p.relative_to(root)): oct((0o777 if p.is_dir() else 0o666) & ~umask) for p in paths}
        assert found == expected

    return check
