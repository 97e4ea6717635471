"""Tiny, learnable image datasets and checkpoints for the training tests, written into tmp dirs."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
from safetensors.torch import load_file

from peft_vision_lora.testing import TINY_VIT, make_tiny_vit  # noqa: F401  (re-exported for the training tests)

# ``python FREEZE_DRIVER N [examples/train.py options]``: trains, then freezes after N optimizer steps (for SIGKILL).
FREEZE_DRIVER = Path(__file__).with_name("freeze_after_steps.py")
# The run that multi-process runs (two processes, two launchers) must equal (fixture one_process_run): 6 steps.
ONE_PROCESS_FLAGS = [
    "--max_steps", "6", "--learning_rate", "1e-2", "--eval_steps", "3", "--per_device_eval_batch_size", "5",
    "--disable_tqdm",
]  # fmt: skip
CLASSES = ("red", "green", "blue")
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def make_imagefolder(
    root: Path,
    *,
    classes: Sequence[str] = CLASSES,
    per_class: dict[str, int] | None = None,
    size: int = 40,
    seed: int = 0,
) -> Path:
    """``root/<split>/<class>/*.png``: noisy images whose mean colour gives the class away, so a tiny model learns."""
    rng = np.random.default_rng(seed)
    per_class = per_class or {"train": 8, "test": 4}
    for split, count in per_class.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array(COLOURS.get(name, rng.integers(0, 256, 3)), dtype=np.float32)
            for i in range(count):
                pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                PIL.Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launcher() -> list[str]:
    """``accelerate launch`` of this interpreter's environment, with the options every CPU test launch shares."""
    accelerate = shutil.which(
        "accelerate", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    assert accelerate, "the accelerate launcher is not installed"
    return [accelerate, "launch", "--mixed_precision", "no", "--dynamo_backend", "no"]


def adapter_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between the saved adapters of two run folders (which must hold the same
    tensors): how far apart two ways of training the same thing ended."""
    first, second = (load_file(Path(folder) / "adapter_model.safetensors") for folder in (a, b))
    assert first.keys() == second.keys(), sorted(first.keys() ^ second.keys())
    return max((first[k] - second[k]).abs().max().item() for k in first)
