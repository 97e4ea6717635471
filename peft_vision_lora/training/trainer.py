"""The package's pieces for ``transformers.Trainer``: collate, metrics, and its recipe's token dropout, LP-FT head
and per-epoch augmentation as callbacks.

The flow of PEFT's image-classification notebook stays as it is (``AutoModelForImageClassification``, ``LoraConfig``,
``get_peft_model``, ``Trainer`` with ``remove_unused_columns=False``); these only replace the hand-written parts.
``examples/trainer_flow.py`` runs it end to end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import EvalPrediction, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..data import ImageTransforms
from ..evaluation.metrics import TOP_K, compute_metrics
from ..token_dropout import TokenDropout
from .features import FeatureDataset, fit_linear_head, head_inputs, trainable_linear
from .model import forward_kwargs, head_module, merged_adapters


def collate_fn(examples: Sequence[Mapping[str, Any]], **model_kwargs: Any) -> dict[str, Any]:
    """Stack ``{"pixel_values", "labels"}`` rows (what :class:`ImageTransforms` gives each row) into a batch.

    ``model_kwargs`` ride along to the model, e.g. ``interpolate_pos_encoding=True`` for images at another size
    than the checkpoint's (bind them with ``functools.partial``).
    """
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.as_tensor([int(example["labels"]) for example in examples])
    return {**batch, **model_kwargs}


def collator(model: nn.Module, image_size: int) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]:
    """:func:`collate_fn` for ``model`` fed ``image_size`` pixel images: position embeddings are interpolated when
    that is not the checkpoint's size (training small images on a 224 px checkpoint)."""
    return partial(collate_fn, **forward_kwargs(model, image_size))


def metrics_for_trainer(labels: Sequence[str]) -> Callable[[EvalPrediction], dict[str, float]]:
    """``Trainer(compute_metrics=...)`` over the package's metric modules (no Hub): ``accuracy`` (top-1), top-5 with
    more than five classes, and the accuracy of each class as ``accuracy_<label>``."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        results = compute_metrics(torch.as_tensor(logits), torch.as_tensor(prediction.label_ids), labels)
        scalars = {"accuracy": results["top1_accuracy"]}
        if f"top{TOP_K}_accuracy" in results:
            scalars[f"top{TOP_K}_accuracy"] = results[f"top{TOP_K}_accuracy"]
        scalars.update({f"accuracy_{label}": value for label, value in results["per_class_accuracy"].items()})
        return scalars

    return compute


class TokenDropoutCallback(TrainerCallback):
    """Token dropout (``--token_keep``) under ``Trainer``: each training forward keeps ``keep`` of the patch tokens.

    Evaluation sees every token (the hook is idle in eval mode). Draws are keyed by ``(args.seed, forward number)``.
    """

    def __init__(self, keep: float = 0.5, *, min_tokens: int = 32) -> None:
        self.keep, self.min_tokens = keep, min_tokens
        self.dropout: TokenDropout | None = None
        self._forward = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.dropout = TokenDropout(kwargs["model"], self.keep, seed=args.seed, min_tokens=self.min_tokens)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # From the state, not a count of calls: Trainer loads a resumed run's state after on_train_begin.
        self._forward = state.global_step * args.gradient_accumulation_steps
        self.dropout.set_batch(self._forward)

    def on_substep_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._forward += 1  # the next micro-batch of a gradient accumulation step
        self.dropout.set_batch(self._forward)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.dropout is not None:
            self.dropout.remove()
            self.dropout = None


class LinearProbeHeadCallback(TrainerCallback):
    """LP-FT (``--head_init linear_probe``) under ``Trainer``: before the first optimizer step, fit the head by
    logistic regression on the frozen backbone's features of ``dataset`` (training images with the *eval* transform).

    Skipped when training resumes from a checkpoint (its head is already trained).
    """

    def __init__(
        self, dataset: Any, *, batch_size: int = 64, collate: Callable[[list[Any]], dict[str, Any]] = collate_fn
    ) -> None:
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.train_accuracy: float | None = None
        self._done = False

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # Not on_train_begin: Trainer loads a resumed run's state (global_step) after it.
        if not self._done and state.global_step == 0:
            model = kwargs["model"]
            head = head_module(model)
            self.train_accuracy = fit_linear_head(trainable_linear(head), self._features(model, head))
        self._done = True

    @torch.no_grad()
    def _features(self, model: nn.Module, head: nn.Module) -> FeatureDataset:
        device, labels = next(model.parameters()).device, []
        with head_inputs(model, head) as captured, merged_adapters(model):
            for batch in DataLoader(self.dataset, batch_size=self.batch_size, collate_fn=self.collate):
                labels.append(batch.pop("labels"))
                model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        return FeatureDataset(torch.cat(captured).float().cpu(), torch.cat(labels))


class EpochCallback(TrainerCallback):
    """Tell :class:`ImageTransforms` the epoch, so each epoch draws new crops and flips (without it, each image gets
    the same augmentation every epoch). The epoch reaches persistent ``DataLoader`` workers too."""

    def __init__(self, *transforms: ImageTransforms) -> None:
        self.transforms = transforms

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        for transform in self.transforms:
            transform.set_epoch(int((state.epoch or 0) + 1e-6))  # floor: a resumed run starts mid-epoch
