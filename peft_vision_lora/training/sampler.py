"""The training data order: a permutation per epoch that depends only on the seed and the epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Shuffles ``range(num_samples)`` anew each epoch, from ``(seed, epoch)`` alone.

    Unlike ``RandomSampler`` it draws from no shared generator, so the order of any epoch can be replayed after a
    resume, and it is the same however many processes later split the batches.
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples
