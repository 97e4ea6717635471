"""From a loaded ``DatasetDict`` to the run's dataloaders, with the checks that must fail before training starts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from datasets import ClassLabel, DatasetDict
from torch.utils.data import DataLoader

from ..data import ImageTransforms, MixupCutmix
from ..data.stream_sources import StreamSource
from .sampler import EpochShuffleSampler


@dataclass
class RunData:
    """The data of one run, loaded and checked: what the trainer evaluates on, its classes and where it came from."""

    splits: DatasetDict  # train and the evaluation splits; for a stream, the evaluation splits only
    labels: list[str]
    source_name: str  # in logs and metrics
    dataset_id: str | None  # a Hub dataset or path to name in the model card; None for in-memory data and shards
    stream: StreamSource | None = None  # iterable training data (shards, --streaming), read per process

    @property
    def num_train(self) -> int | None:
        """Training images, where known."""
        return self.stream.num_samples if self.stream is not None else len(self.splits["train"])


def class_names(data: DatasetDict, source: str) -> list[str]:
    """The class names shared by every split, after checking that no split is empty and every label is a class."""
    if "train" not in data:
        raise ValueError(f"Dataset {source} has no 'train' split (it has: {', '.join(data) or 'none'}).")
    names: list[str] | None = None
    for split, ds in data.items():
        if len(ds) == 0:
            raise ValueError(f"The {split!r} split of {source} is empty: no images to {split} on.")
        feature = ds.features.get("label")
        if not isinstance(feature, ClassLabel):
            raise ValueError(f"The {split!r} split of {source} has no ClassLabel 'label' column (got {feature!r}).")
        if names is None:
            names = list(feature.names)
        elif list(feature.names) != names:
            raise ValueError(
                f"The {split!r} split of {source} has classes {feature.names}, but 'train' has {names}: "
                "all splits must share one label set, in the same order."
            )
        values = ds.with_format("arrow")["label"].to_numpy(zero_copy_only=False)
        outside = np.unique(values[(values < 0) | (values >= len(names))])
        if outside.size:
            raise ValueError(
                f"The {split!r} split of {source} has label value(s) {outside[:10].tolist()} outside the "
                f"{len(names)} classes of the head (0..{len(names) - 1}); -1 marks a missing label."
            )
    return names


def resolve_eval_strategy(eval_strategy: str | None, splits: DatasetDict) -> str:
    """``--eval_strategy`` as given, else ``epoch`` when a validation split can select the best weights, else ``no``
    (the test split is then evaluated once, at the end)."""
    return eval_strategy or ("epoch" if "validation" in splits else "no")


def choose_eval_splits(splits: DatasetDict, eval_strategy: str) -> tuple[str | None, str | None]:
    """The split evaluated during training and the test split evaluated at the end (when it is not that one).

    A validation split evaluates during training and selects the best weights; without one the test split is only
    watched (when ``eval_strategy`` asks for it), never used to select (that would leak it into the reported result).
    """
    found = [s for s in ("validation", "test") if s in splits]
    eval_split = found[0] if found and eval_strategy != "no" else None
    return eval_split, "test" if "test" in splits and eval_split != "test" else None


def check_same_classes(dataset_labels: Sequence[str], checkpoint_labels: Sequence[str], checkpoint: Any) -> None:
    """A resumed run must train the head it was saving: the same classes, in the same order."""
    if list(dataset_labels) == list(checkpoint_labels):
        return
    only_data = sorted(set(dataset_labels) - set(checkpoint_labels))
    only_checkpoint = sorted(set(checkpoint_labels) - set(dataset_labels))
    detail = (
        f"only in the dataset: {only_data}; only in the checkpoint: {only_checkpoint}"
        if only_data or only_checkpoint
        else "same classes in a different order"
    )
    raise ValueError(
        f"The dataset's classes differ from those of the checkpoint being resumed ({checkpoint}): {detail}."
    )


@dataclass
class TrainData:
    """Training batches of a map-style dataset: global batches in a seeded order per epoch, which Accelerate splits
    across processes. Its position is the epoch and batch the trainer's state holds, so it keeps no state of its own.

    :class:`~peft_vision_lora.training.stream_data.StreamTrainData` has the same methods for iterable data.
    """

    loader: DataLoader
    sampler: EpochShuffleSampler
    transforms: ImageTransforms | None  # None: batches of cached features
    mixup: MixupCutmix | None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.loader)

    def prepare(self, accelerator: Accelerator) -> None:
        self.loader = accelerator.prepare(self.loader)

    def epoch(self, epoch: int, skip: int, accelerator: Accelerator) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of ``epoch`` after its first ``skip`` (a run resumed mid-epoch: the same order, minus what was
        already trained on)."""
        for part in (self.sampler, self.transforms, self.mixup):
            if part is not None:
                part.set_epoch(epoch)
        self.loader.set_epoch(epoch)  # prepared by Accelerate, whose loader counts its own epochs
        return iter(accelerator.skip_first_batches(self.loader, skip) if skip else self.loader)

    def set_size(self, size: int) -> None:
        """Progressive resolution: train at ``size`` from the next batch on (images only)."""
        if self.transforms is not None:
            self.transforms.set_size(size)

    def gather_state(self) -> None:
        """Nothing beyond the trainer's epoch and batch count (see the stream's)."""
        return None

    def load_state(self, saved: list[dict[str, Any]] | None, accelerator: Accelerator, checkpoint: Any) -> None:
        return None

    def summary(self) -> dict[str, Any]:
        return {}


def seeded_train_loader(
    dataset: Any, *, global_batch_size: int, seed: int, **loader_kwargs: Any
) -> tuple[DataLoader, EpochShuffleSampler]:
    """A loader in a seeded order per epoch; the last incomplete batch is dropped unless the split is smaller than one
    batch. Shared by the image and the cached-feature loaders so both see the same order and batch count."""
    sampler = EpochShuffleSampler(len(dataset), seed)
    loader = DataLoader(
        dataset,
        batch_size=global_batch_size,
        sampler=sampler,
        drop_last=len(dataset) >= global_batch_size,
        # Its own generator, so creating an iterator (which draws worker seeds) never advances the global RNG that
        # dropout uses: a resumed run creates one more iterator than an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
        **loader_kwargs,
    )
    return loader, sampler


def train_dataloader(
    data: DatasetDict,
    transforms: ImageTransforms,
    *,
    global_batch_size: int,
    seed: int,
    num_workers: int = 0,
    mixup: MixupCutmix | None = None,
) -> TrainData:
    """Batches of the *global* batch size (Accelerate splits each across processes), in a seeded order per epoch.

    The last incomplete batch is dropped, unless the split is smaller than one batch.
    """
    dataset = transforms.attach(data["train"])
    loader, sampler = seeded_train_loader(
        dataset, global_batch_size=global_batch_size, seed=seed, num_workers=num_workers, collate_fn=mixup
    )
    return TrainData(loader, sampler, transforms, mixup)


def eval_dataloader(
    dataset: Any, transforms: ImageTransforms, *, global_batch_size: int, num_workers: int = 0
) -> DataLoader:
    return DataLoader(
        transforms.attach(dataset),
        batch_size=global_batch_size,
        shuffle=False,
        num_workers=num_workers,
        generator=torch.Generator(),
    )
