"""``peft-vision-lora evaluate``: a trained folder (or Hub id) on a dataset split, with the training run's evaluation.

Writes ``metrics.json`` (top-1, top-5, per-class accuracy, loss, confusion matrix under the split's name, merged into
the file a training run left there), ``confusion_matrix.png``, ``mistakes.png``, the grid of the most confident
mistakes, and, when the folder has none, ``examples/``: one image per class of the split for the demo.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from accelerate import Accelerator
from torch import nn
from transformers import AutoModelForImageClassification
from transformers.image_processing_utils import BaseImageProcessor

from ..adapters import ADAPTER_CONFIG, load_model
from ..data import ImageTransforms
from ..data.images import to_rgb
from ..data.stream_sources import read_whole
from ..processing import load_image_processor
from ..training.data import eval_dataloader
from ..training.model import forward_kwargs
from ..training.outputs import CONFUSION_FILE, METRICS_FILE
from .examples import write_examples
from .metrics import compute_metrics, predict_logits
from .mistakes import MISTAKES_FILE, most_confident_mistakes, plot_mistakes
from .plots import plot_confusion_matrix

logger = logging.getLogger(__name__)

THUMBNAIL = 224  # longest side of the images in the mistakes grid


def load_classifier_folder(path_or_id: str | os.PathLike) -> tuple[nn.Module, BaseImageProcessor]:
    """The classifier of an adapter folder (local or Hub), or of a plain transformers model folder, and its processor.

    Never runs code from the folder (no ``trust_remote_code``).
    """
    folder = Path(path_or_id).expanduser()
    if folder.is_dir() and not (folder / ADAPTER_CONFIG).is_file():
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        return model, load_image_processor(folder)
    model = load_model(path_or_id)
    return model, model.vision_lora_image_processor


def _model_labels(model: nn.Module) -> list[str]:
    config = model.config
    return [config.id2label[i] for i in range(config.num_labels)]


def _label_map(dataset_labels: list[str], model_labels: list[str], dataset: str) -> np.ndarray:
    """Dataset class index -> model label index; every class of the dataset must be one the model predicts."""
    unknown = sorted(set(dataset_labels) - set(model_labels))
    if unknown:
        raise ValueError(
            f"Classes of {dataset} that the model does not know: {unknown[:10]}{' ...' if len(unknown) > 10 else ''} "
            f"(the model's labels: {model_labels[:10]}{' ...' if len(model_labels) > 10 else ''})."
        )
    return np.array([model_labels.index(name) for name in dataset_labels])


def default_output_dir(path_or_id: str | os.PathLike) -> Path:
    """The folder itself when it is local; ``eval-<user>--<name>`` in the working directory for a Hub id."""
    folder = Path(path_or_id).expanduser()
    return folder if folder.is_dir() else Path(f"eval-{os.fspath(path_or_id).replace('/', '--')}")


def evaluate_folder(
    path_or_id: str | os.PathLike,
    dataset: str | os.PathLike,
    *,
    split: str = "test",
    output_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    num_mistakes: int = 16,
    dataset_format: str | None = None,
) -> dict[str, Any]:
    """Evaluate a trained folder on ``split`` of ``dataset``; returns the split's metrics (as in ``metrics.json``)."""
    if num_mistakes < 0 or batch_size < 1:
        raise ValueError(f"num_mistakes must be >= 0 and batch_size >= 1, got {num_mistakes} and {batch_size}")
    data = read_whole(dataset, format=dataset_format)
    if split not in data:
        raise ValueError(f"{dataset} has no {split!r} split (it has: {', '.join(data)}).")
    ds = data[split]
    model, processor = load_classifier_folder(path_or_id)
    labels = _model_labels(model)
    label_map = _label_map(list(ds.features["label"].names), labels, os.fspath(dataset))

    accelerator = Accelerator()
    model = accelerator.prepare(model)
    transforms = ImageTransforms.from_processor(processor, train=False)
    loader = eval_dataloader(ds, transforms, global_batch_size=batch_size)
    extra = forward_kwargs(model, transforms.preprocessing.size[0])
    logits, references = predict_logits(model, loader, accelerator, extra)
    references = torch.from_numpy(label_map)[references]
    metrics = {"dataset": os.fspath(dataset), **compute_metrics(logits, references, labels)}

    out = Path(output_dir) if output_dir is not None else default_output_dir(path_or_id)
    out.mkdir(parents=True, exist_ok=True)
    _merge_metrics(out / METRICS_FILE, split, metrics, labels)
    plot_confusion_matrix(metrics["confusion_matrix"], labels, out / CONFUSION_FILE)
    mistakes = most_confident_mistakes(logits, references, labels, num_mistakes)

    def load_image(index: int) -> PIL.Image.Image:
        image = to_rgb(PIL.ImageOps.exif_transpose(ds[index]["image"]))
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        return image

    plot_mistakes(mistakes, load_image, out / MISTAKES_FILE, num_samples=len(references))
    write_examples(ds, ds.features["label"].names, out)
    logger.info("Evaluated %s on %s[%s]: wrote %s", path_or_id, dataset, split, out)
    return metrics


def _merge_metrics(path: Path, split: str, metrics: dict[str, Any], labels: list[str]) -> None:
    """Put ``metrics`` under ``split`` in ``path``, keeping everything else a training run recorded there."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        results = {}
    results.setdefault("labels", labels)
    results[split] = metrics
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
