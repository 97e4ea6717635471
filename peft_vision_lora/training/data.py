"""From a loaded ``DatasetDict`` to the run's dataloaders, with the checks that must fail before training starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, DatasetDict
from torch.utils.data import DataLoader

from ..data import ImageTransforms, MixupCutmix
from .sampler import EpochShuffleSampler


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
    """The training dataloader and everything whose epoch must be set before iterating it."""

    loader: DataLoader
    sampler: EpochShuffleSampler
    transforms: ImageTransforms | None  # None: batches of cached features
    mixup: MixupCutmix | None

    def set_epoch(self, epoch: int) -> None:
        for part in (self.sampler, self.transforms, self.mixup):
            if part is not None:
                part.set_epoch(epoch)


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
