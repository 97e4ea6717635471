"""What a run leaves in its output folder: the model folder, ``metrics.json``, ``train_log.jsonl`` and two plots.

For LoRA the model folder is the portable adapter folder of :func:`peft_vision_lora.adapters.save_pretrained`; full
fine-tuning and linear probing write a plain transformers model folder. Checkpoints live next to them in
``checkpoints/``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import nn
from transformers.image_processing_utils import BaseImageProcessor

from ..adapters import write_model_folder
from ..card import CardInfo
from ..evaluation.plots import plot_confusion_matrix, plot_training_curves
from ..io import atomic_files, write_json, write_text
from .checkpointing import checkpoint_root, list_checkpoints

LOG_FILE = "train_log.jsonl"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
# The metrics of each split that go into the model card's results table (and the training log).
HEADLINE_METRICS = ("top1_accuracy", "top5_accuracy", "loss")


def prepare_output_dir(accelerator: Accelerator, output_dir: Path, *, resuming: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; clear it with ``overwrite``; drop leftovers of killed saves."""
    # Every process checks (the folder is shared), so a refusal stops them all rather than leaving some waiting.
    if not resuming and not overwrite and output_dir.is_dir() and any(output_dir.iterdir()):
        hint = " or --resume_from_checkpoint latest to continue it" if list_checkpoints(output_dir) else ""
        raise FileExistsError(
            f"Output directory {output_dir} already exists and is not empty. Pass --overwrite_output_dir to "
            f"replace it{hint}."
        )
    if accelerator.is_main_process:
        if overwrite and not resuming:
            shutil.rmtree(output_dir, ignore_errors=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in checkpoint_root(output_dir).glob(".*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink()
    accelerator.wait_for_everyone()


def write_log(path: Path, entries: Sequence[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(e) + "\n" for e in entries))


def append_log(path: Path, entry: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def headline_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """``eval_top1_accuracy``, ``test_loss``, ...: the scalars of the model card's results table."""
    return {
        f"{split}_{name}": results[split][name]
        for split in ("eval", "test")
        if split in results
        for name in HEADLINE_METRICS
        if name in results[split]
    }


def write_run_folder(
    output_dir: Path,
    model: nn.Module,
    image_processor: BaseImageProcessor,
    results: dict[str, Any],
    log_history: Sequence[dict[str, Any]],
    *,
    command: str | None = None,
    dataset: str | None = None,
) -> None:
    """Write the model folder, metrics, log and plots into ``output_dir`` (main process only)."""
    metrics = headline_metrics(results)
    card = CardInfo(method=results["method"], metrics=metrics, command=command, dataset=dataset)
    save_model_folder(model, output_dir, image_processor, card)
    write_json(output_dir / METRICS_FILE, results)
    write_log(output_dir / LOG_FILE, log_history)
    split = next((name for name in ("test", "eval") if results.get(name)), None)
    final = (split, results[split]) if split else None
    plot_training_curves(log_history, output_dir / CURVES_FILE, final=final)
    if final:
        plot_confusion_matrix(final[1]["confusion_matrix"], results["labels"], output_dir / CONFUSION_FILE)


def save_model_folder(
    model: nn.Module,
    out_dir: str | os.PathLike,
    image_processor: BaseImageProcessor,
    card: CardInfo,
) -> Path:
    """Write the model folder (LoRA: the portable adapter folder) into ``out_dir``, keeping the rest of ``out_dir``.

    The folder is completed in a hidden staging folder and its files are then renamed into ``out_dir`` one by one,
    so the run's checkpoints and logs next to them stay where they are.
    """
    out_dir = Path(out_dir)
    with atomic_files(out_dir, staging_name=".model.tmp") as staging:
        # The model card's usage example shows the folder name.
        write_model_folder(staging, model, image_processor, card.named(out_dir.name))
    return out_dir
