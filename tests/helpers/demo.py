"""Adapter folders, awkward uploads and a local server for the demo tests, all written into tmp dirs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

import peft_vision_lora as pvl
from helpers.training import free_port
from peft_vision_lora.evaluation.plots import plot_confusion_matrix, plot_training_curves
from peft_vision_lora.training.outputs import CONFUSION_FILE, CURVES_FILE, METRICS_FILE

TWO_CLASSES = ("sunflower", "bluebell")  # far apart in colour and shape: a tiny run tells them apart reliably


def make_adapter(
    base: Path,
    folder: Path,
    labels: Sequence[str],
    seed: int = 0,
    *,
    results: bool = True,
    image_size: int | None = None,
) -> Path:
    """A random (non-identity) LoRA adapter with its own head; with ``results``, the files a training run leaves."""
    torch.manual_seed(seed)
    model = pvl.build_model(base, list(labels), init_lora_weights=False, image_size=image_size)
    pvl.save_pretrained(model, folder)
    if results:
        log = [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-3 * (1 - s / 5)} for s in range(1, 5)]
        plot_training_curves(log, folder / CURVES_FILE)
        matrix = np.eye(len(labels), dtype=int).tolist()
        plot_confusion_matrix(matrix, labels, folder / CONFUSION_FILE)
        per_class = {label: 1.0 - i / 10 for i, label in enumerate(labels)}
        (folder / METRICS_FILE).write_text(f'{{"test": {{"per_class_accuracy": {_json(per_class)}}}}}')
    return folder


def _json(value: object) -> str:
    import json

    return json.dumps(value)


def flowers_subset(flowers12: Path, root: Path, train: int = 24, test: int = 6) -> Path:
    """``root/{train,test}/<class>/*.jpg``: the first images of :data:`TWO_CLASSES` in flowers12."""
    for split, count in (("train", train), ("test", test)):
        for name in TWO_CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for path in sorted((flowers12 / split / name).glob("*.jpg"))[:count]:
                shutil.copy(path, folder / path.name)
    return root


def make_bad_images(folder: Path, photo: Path) -> dict[str, Path]:
    """The uploads a demo must survive: refused ones, and odd ones it must convert (16-bit PNG, CMYK JPEG)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["not_an_image"] = folder / "notes.jpg"
    files["not_an_image"].write_text("these are my holiday notes, not a photo\n")
    data = photo.read_bytes()
    files["truncated"] = folder / "truncated.jpg"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["one_pixel"] = folder / "one_pixel.png"
    PIL.Image.new("RGB", (1, 1), "yellow").save(files["one_pixel"])
    with PIL.Image.open(photo) as image:
        rgb = image.convert("RGB")
    files["sixteen_bit"] = folder / "sixteen_bit.png"
    grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
    PIL.Image.fromarray(grey, mode="I;16").save(files["sixteen_bit"])
    files["cmyk"] = folder / "cmyk.jpg"
    rgb.convert("CMYK").save(files["cmyk"], quality=95)
    # Just over PIL's decompression-bomb limit; a blank greyscale PNG of that size compresses to about 100 kB.
    side = int(PIL.Image.MAX_IMAGE_PIXELS**0.5) + 1
    files["bomb"] = folder / "bomb.png"
    PIL.Image.new("L", (side, side)).save(files["bomb"], optimize=False)
    return files


REFUSED = ("not_an_image", "truncated", "one_pixel", "bomb")
CONVERTED = ("sixteen_bit", "cmyk")


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve a Gradio app on 127.0.0.1 at a free port for the duration of the block; yields its URL."""
    port = free_port()
    app.queue(default_concurrency_limit=4)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()
