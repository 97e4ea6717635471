"""Fixtures of the demo tests: tiny random adapters on one tiny backbone, awkward uploads, a real flowers12 run."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from helpers.demo import flowers_subset, make_adapter, make_bad_images

pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")


@pytest.fixture(scope="session")
def tiny_adapters(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two adapters with different label sets on the tiny random ViT; ``colours`` has the run's result files."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "colours": make_adapter(tiny_models["vit"], root / "colours", ["red", "green", "blue"], seed=1),
        "pets": make_adapter(tiny_models["vit"], root / "pets", ["cat", "dog"], seed=2, results=False),
    }


@pytest.fixture(scope="session")
def bad_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import numpy as np
    import PIL.Image

    root = tmp_path_factory.mktemp("bad-images")
    photo = root / "photo.jpg"
    pixels = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(photo, quality=95)
    return make_bad_images(root / "uploads", photo)


@pytest.fixture(scope="session")
def flowers_run(shared_vit: Path, flowers12: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder made as the README's demo command makes one: LoRA on the ViT-S/14, sunflower vs bluebell at
    56 px (about 30 s on 2 cores) with ``--eval_strategy no``, then ``evaluate`` (mistakes grid, example images)."""
    import peft_vision_lora as pvl
    from peft_vision_lora.evaluation.folder import evaluate_folder

    root = tmp_path_factory.mktemp("flowers-run")
    data = flowers_subset(flowers12, root / "data")
    run = root / "sunflower-vs-bluebell"
    try:
        pvl.train(
            model=str(shared_vit),
            dataset=str(data),
            output_dir=str(run),
            normalization="imagenet",
            image_size=56,
            max_steps=6,
            per_device_train_batch_size=16,
            learning_rate=1e-3,
            head_lr=1e-2,
            eval_strategy="no",
            logging_steps=1,
            save_strategy="no",
            disable_tqdm=True,
        )
        evaluate_folder(run, data)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return run
