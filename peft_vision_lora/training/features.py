"""Linear probe on cached features: the frozen backbone runs once per split, the head trains on its outputs.

A linear probe only trains the classification head, so every epoch would otherwise recompute the same backbone
forward pass for each image. The features are the head's exact input (ViT: the final-layernormed CLS token,
DINOv2: CLS and mean patch token concatenated, CLIP: the pooled output), captured generically by a forward
pre-hook on the head module, so the head trained on them is the head of the full classifier.

Caching is exact only for a deterministic transform: with random augmentation every epoch would see other
features. Cached training features therefore use the *eval* transform (no random crop, no flip).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers.modeling_outputs import ImageClassifierOutput

from ..data import ImageTransforms
from .data import TrainData, eval_dataloader, seeded_train_loader
from .model import head_module

FEATURES_KEY = "features"


class FeatureDataset(Dataset):
    """Cached features and their labels, as ``{"features", "labels"}`` samples."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels.")
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {FEATURES_KEY: self.features[index], "labels": self.labels[index]}


class FeatureClassifier(nn.Module):
    """The classification head alone, called on cached features.

    It holds the head module itself (not a copy), so training it trains the full classifier's head.
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> ImageClassifierOutput:
        return ImageClassifierOutput(logits=self.head(features))


@contextlib.contextmanager
def head_inputs(model: nn.Module, head: nn.Module) -> Iterator[list[torch.Tensor]]:
    """``model`` in eval mode, and the list every input of ``head`` is appended to while the block runs."""
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            raise TypeError(f"{type(module).__name__} head was not called with a tensor: cannot cache its input.")
        captured.append(args[0].detach())

    was_training = model.training
    model.eval()
    hook = head.register_forward_pre_hook(capture)
    try:
        yield captured
    finally:
        hook.remove()
        model.train(was_training)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    head: nn.Module,
    dataloader: DataLoader,
    accelerator: Accelerator,
    forward_kwargs: dict[str, Any] | None = None,
    *,
    gather: bool = True,
) -> FeatureDataset:
    """Run ``model`` over ``dataloader`` (in eval mode) and keep what ``head`` receives, with the labels.

    The loader may be sharded by Accelerate: with ``gather`` the features of all processes are gathered batch by
    batch, in dataset order, so every process holds the whole split. Without it each process keeps its own (a stream,
    whose processes may read different numbers of batches).
    """
    features, labels = [], []
    with head_inputs(model, head) as captured:
        for batch in dataloader:
            with accelerator.autocast():
                model(pixel_values=batch["pixel_values"].to(accelerator.device), **(forward_kwargs or {}))
            pair = (captured.pop().float(), batch["labels"].to(accelerator.device))
            batch_features, batch_labels = accelerator.gather_for_metrics(pair) if gather else pair
            features.append(batch_features.cpu())
            labels.append(batch_labels.cpu())
    return FeatureDataset(torch.cat(features), torch.cat(labels))


def backbone_features(
    model: nn.Module,
    dataset: Any,
    transforms: ImageTransforms,
    accelerator: Accelerator,
    *,
    batch_size: int,
    num_workers: int = 0,
    forward_kwargs: dict[str, Any] | None = None,
) -> FeatureDataset:
    """What the head of ``model`` receives for every image of ``dataset`` (``transforms``: the eval transform),
    computed with ``batch_size`` images per process and gathered on every process."""
    images = accelerator.prepare(
        eval_dataloader(
            dataset,
            transforms,
            global_batch_size=batch_size * accelerator.num_processes,
            num_workers=num_workers,
        )
    )
    model = accelerator.unwrap_model(model)
    return extract_features(model, head_module(model), images, accelerator, forward_kwargs)


@dataclass
class FeatureCache:
    """A linear probe's data: loaders of cached features in place of image loaders, and the head to train on them."""

    train: TrainData
    eval_loaders: dict[str, DataLoader]
    step_model: FeatureClassifier
    seconds: float  # spent computing the features


def cache_features(
    model: nn.Module,
    splits: Mapping[str, Any],
    transforms: ImageTransforms,
    accelerator: Accelerator,
    *,
    train_batch_size: int,
    eval_batch_size: int,
    seed: int,
    num_workers: int = 0,
    forward_kwargs: dict[str, Any] | None = None,
) -> FeatureCache:
    """Run the frozen backbone once over each split (``"train"`` and the eval splits) and return loaders of its
    features: the training loader keeps the image loader's order and batch count (``train_batch_size``: global)."""
    started = time.perf_counter()
    model.to(accelerator.device)
    features = {
        split: backbone_features(
            model,
            dataset,
            transforms,
            accelerator,
            batch_size=eval_batch_size,
            num_workers=num_workers,
            forward_kwargs=forward_kwargs,
        )
        for split, dataset in splits.items()
    }
    train = feature_train_data(features.pop("train"), global_batch_size=train_batch_size, seed=seed)
    loaders = {
        split: feature_eval_loader(ds, global_batch_size=eval_batch_size * accelerator.num_processes)
        for split, ds in features.items()
    }
    head = head_module(accelerator.unwrap_model(model))
    return FeatureCache(train, loaders, FeatureClassifier(head), time.perf_counter() - started)


def feature_train_data(dataset: FeatureDataset, *, global_batch_size: int, seed: int) -> TrainData:
    """Training batches of cached features: the same order, batch count and dropped last batch as the image
    loader of :func:`peft_vision_lora.training.data.train_dataloader` over the same split."""
    loader, sampler = seeded_train_loader(dataset, global_batch_size=global_batch_size, seed=seed)
    return TrainData(loader, sampler, transforms=None, mixup=None)


def feature_eval_loader(dataset: FeatureDataset, *, global_batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=global_batch_size, shuffle=False, generator=torch.Generator())


def trainable_linear(head: nn.Module) -> nn.Linear:
    """The trainable ``nn.Linear`` of a classification head (PEFT wraps the head to save in a copy)."""
    found = [m for m in head.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]
    if len(found) != 1:
        raise ValueError(f"Expected one trainable Linear in the head {type(head).__name__}, found {len(found)}.")
    return found[0]


@torch.enable_grad()
def fit_linear_head(head: nn.Linear, dataset: FeatureDataset, *, l2: float = 1e-3, max_iter: int = 100) -> float:
    """Fit ``head`` in place to cached features: L2-regularised logistic regression by full-batch L-BFGS (a convex
    problem: no learning rate to tune). Returns the training accuracy. Deterministic, so every process fits the
    same head from the same features.

    The penalty keeps the logits moderate: an unregularised fit of separable features grows without bound, and a
    saturated head passes almost no gradient on to the LoRA weights that train after it.
    """
    # float64: L-BFGS's line search then follows the same path when the features differ by float32 rounding (as
    # between 1 and N processes), so the head does too.
    device, dtype = head.weight.device, torch.float64
    features, labels = dataset.features.to(device, dtype), dataset.labels.to(device)
    weight = torch.zeros(head.out_features, head.in_features, device=device, dtype=dtype, requires_grad=True)
    bias = torch.zeros(head.out_features, device=device, dtype=dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        logits = torch.nn.functional.linear(features, weight, bias)
        loss = torch.nn.functional.cross_entropy(logits, labels) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
        logits = torch.nn.functional.linear(features, weight, bias)
        return (logits.argmax(-1) == labels).float().mean().item()
