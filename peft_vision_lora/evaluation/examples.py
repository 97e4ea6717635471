"""Example images of a model folder (``examples/``): what the demo's Classify tab offers to click.

``peft-vision-lora evaluate`` writes one image per class of the evaluated split when the folder has none, so a run
folder shows its task without the user hunting for a photo; a folder that already has ``examples/`` keeps its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset

from ..data.images import open_image, to_rgb, upright
from ..io import atomic_folder

EXAMPLES_DIR = "examples"
EXAMPLE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
MAX_EXAMPLES = 8  # a row or two of thumbnails; more only pushes the page down
EXAMPLE_SIDE = 448  # longest side: the short side stays above the 224 px (+ crop margin) a classifier reads


def example_images(folder: Path) -> list[Path]:
    """The example images a model folder ships in ``examples/``, sorted by name."""
    examples = folder / EXAMPLES_DIR
    if not examples.is_dir():
        return []
    return sorted(p for p in examples.iterdir() if p.suffix.lower() in EXAMPLE_EXTENSIONS and p.is_file())


def _file_name(position: int, label: str) -> str:
    slug = re.sub(r"[^\w-]+", "-", label).strip("-") or "class"
    return f"{position:02d}-{slug}.jpg"  # the position keeps names unique and the order of the classes


def write_examples(dataset: Dataset, labels: Sequence[str], folder: Path, *, limit: int = MAX_EXAMPLES) -> list[Path]:
    """Write into ``folder/examples/`` the first image of each class of ``dataset``, for the first ``limit`` classes
    it meets (JPEG, upright, at most ``EXAMPLE_SIDE`` px); nothing when ``folder`` already has ``examples/``."""
    if (folder / EXAMPLES_DIR).exists() or limit < 1:
        return []
    first: dict[int, int] = {}
    for index, label in enumerate(dataset["label"]):  # the label column only: no image is decoded to choose
        if label not in first and len(first) < limit:
            first[label] = index
    with atomic_folder(folder / EXAMPLES_DIR) as tmp:
        for position, label in enumerate(sorted(first), start=1):
            # Decoded or not (shards keep their encoded bytes): open_image takes both.
            image = to_rgb(upright(open_image(dataset[first[label]]["image"])))
            image.thumbnail((EXAMPLE_SIDE, EXAMPLE_SIDE))
            image.save(tmp / _file_name(position, labels[label]), quality=90)
    return example_images(folder)
