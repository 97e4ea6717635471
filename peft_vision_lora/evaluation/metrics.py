"""Evaluation: loss, top-1/top-5 and per-class accuracy and the confusion matrix over a (sharded) dataloader.

The metrics are ``evaluate`` modules shipped in ``peft_vision_lora/metrics`` and loaded by path, so evaluation
never needs the Hub. Predictions of all processes are gathered with ``gather_for_metrics``, which also drops the
samples Accelerate repeats to give every process a full last batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import evaluate
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

METRICS_DIR = Path(__file__).resolve().parents[1] / "metrics"
TOP_K = 5


@cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """A metric module shipped with the package (``top_k_accuracy``, ``per_class_accuracy``, ``confusion_matrix``)."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"No metric module {name!r} in {METRICS_DIR}.")
    return evaluate.load(str(path))


def compute_metrics(logits: torch.Tensor, references: torch.Tensor, labels: Sequence[str]) -> dict[str, Any]:
    """All evaluation metrics from the logits and true labels of a whole split."""
    logits, references = logits.float().cpu(), references.long().cpu()
    num_classes = len(labels)
    scores, refs = logits.numpy(), references.numpy()
    predictions = logits.argmax(dim=-1).numpy()
    top_k = load_metric("top_k_accuracy")
    results: dict[str, Any] = {
        "loss": F.cross_entropy(logits, references).item(),
        "top1_accuracy": top_k.compute(predictions=scores, references=refs, k=1)["accuracy"],
    }
    if num_classes > TOP_K:  # with at most k classes top-k accuracy is trivially 1
        results[f"top{TOP_K}_accuracy"] = top_k.compute(predictions=scores, references=refs, k=TOP_K)["accuracy"]
    per_class = load_metric("per_class_accuracy").compute(
        predictions=predictions, references=refs, num_classes=num_classes
    )["per_class_accuracy"]
    results["per_class_accuracy"] = dict(zip(labels, per_class))
    results["confusion_matrix"] = load_metric("confusion_matrix").compute(
        predictions=predictions, references=refs, num_classes=num_classes
    )["confusion_matrix"]
    results["num_samples"] = len(refs)
    return results


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The forward arguments of a batch: everything but the labels (``pixel_values``, or cached ``features``)."""
    return {key: value for key, value in batch.items() if key != "labels"}


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataloader: DataLoader,
    accelerator: Accelerator,
    labels: Sequence[str],
    forward_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on every sample of ``dataloader`` (all processes get the same result)."""
    return compute_metrics(*predict_logits(model, dataloader, accelerator, forward_kwargs), labels)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    dataloader: DataLoader,
    accelerator: Accelerator,
    forward_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float logits and true labels of every sample of ``dataloader``, in dataset order, gathered on every process."""
    was_training = model.training
    model.eval()
    all_logits, all_refs = [], []
    for batch in dataloader:
        logits = model(**model_inputs(batch), **(forward_kwargs or {})).logits
        logits, refs = accelerator.gather_for_metrics((logits.float(), batch["labels"]))
        all_logits.append(logits.cpu())
        all_refs.append(refs.cpu())
    model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_refs)
