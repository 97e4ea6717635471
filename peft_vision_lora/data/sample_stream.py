"""Iterable training data: tar shards or a ``datasets`` streaming dataset, split by process and loader worker,
shuffled in a seeded buffer, and resumable to the exact sample.

The data come in *units* that are read front to back (a tar shard, a shard of a streaming dataset). Each
``(process rank, DataLoader worker)`` pair is a *slot*; in epoch ``e`` the units are put in a seeded order and slot
``s`` of ``S`` reads units ``s, s + S, s + 2S, ...`` of it (WebDataset's ``split_by_node`` then ``split_by_worker``,
as ``datasets.distributed.split_dataset_by_node`` does by shards). With fewer units than slots every slot reads all
units and keeps every ``S``-th sample instead. Either way the slots are disjoint and together see every sample once
per epoch. A slot's stream is endless (epoch after epoch): training is step-based.

Everything a slot yields is a pure function of ``(seed, epoch, slot)``: the unit order, the split and the shuffle
buffer's draws. Each sample carries its position (logical worker, epoch, offset in the slot's epoch); a checkpoint
stores the position after the last consumed sample of each worker, and a resumed stream replays the epoch up to it
without decoding (labels are checked, images are not opened), so it continues with the next sample.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .shard_reader import Sample, ShardError, iter_shard

logger = logging.getLogger(__name__)

_REPORTED = 20  # bad samples named in warnings per worker; the count covers all of them

Reader = Callable[[str], Iterator["Sample | ShardError"]]


@dataclass
class ShardReader:
    """Reads one tar shard into checked samples (a picklable reader for DataLoader workers)."""

    names: Sequence[str]
    on_bad: str = "skip"

    def __call__(self, url: str) -> Iterator[Sample | ShardError]:
        return iter_shard(url, self.names, self.on_bad)


def sample_key(sample: Sample, epoch: int) -> int:
    """The seed key of a sample's augmentation in ``epoch``: its shard file name and key, not where it is stored."""
    name = f"{epoch}:{sample.shard.rsplit('/', 1)[-1]}:{sample.key}".encode()
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "little") >> 1


def seeded_order(rng: np.random.Generator, count: int) -> list[int]:
    """A permutation of ``range(count)`` drawn from ``rng``.

    Ordering by ``rng.random`` (rather than ``permutation``) ties the order to numpy's stable bit stream."""
    return np.argsort(rng.random(count), kind="stable").tolist()


@dataclass
class SampleStream(IterableDataset):
    """The training samples of one process, endless, as ``{"image", "label", "index", "stream"}`` dicts.

    ``image`` is ``{"bytes", "path"}`` (path ``shard/key.ext``, for messages), ``index`` the augmentation key,
    ``stream`` the position ``(worker, epoch, offset, skipped)``. ``start`` maps a logical worker to the
    ``(epoch, offset)`` it resumes at; DataLoader worker ``i`` plays logical worker ``(i + first_worker) % W`` so a
    resumed loader's first batch comes from the worker whose turn it was. ``epochs``/``limit`` make it finite.
    """

    units: Sequence[str]
    reader: Reader
    seed: int = 0
    shuffle_buffer: int = 1000
    rank: int = 0
    world_size: int = 1
    on_bad: str = "skip"
    start: dict[int, tuple[int, int]] = field(default_factory=dict)
    first_worker: int = 0
    epochs: int | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        super().__init__()
        if not self.units:
            raise ValueError("No shards to read.")
        if self.shuffle_buffer < 0:
            raise ValueError(f"--shuffle_buffer must be >= 0, got {self.shuffle_buffer}")

    def slot(self) -> tuple[int, int, int]:
        """(logical worker, this slot, number of slots) of the calling DataLoader worker."""
        info = get_worker_info()
        workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        logical = (worker_id + self.first_worker) % workers
        return logical, self.rank * workers + logical, self.world_size * workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, slot, slots = self.slot()
        epoch, offset = self.start.get(worker, (0, 0))
        bad, yielded = [0], 0
        while self.epochs is None or epoch < self.epochs:
            count = 0
            for count, sample in enumerate(self.epoch_samples(epoch, slot, slots, bad), start=1):  # noqa: B007
                if count <= offset:
                    continue  # consumed before the checkpoint: replayed for the buffer's sake, never decoded
                yield {
                    "image": {"bytes": sample.image, "path": sample.name},
                    "label": sample.label,
                    "index": sample_key(sample, epoch),
                    "stream": (worker, epoch, count, bad[0]),
                }
                yielded += 1
                if self.limit is not None and yielded >= self.limit:
                    return
            if count == 0:
                raise ShardError(
                    ", ".join(self.units[:3]) + (" ..." if len(self.units) > 3 else ""),
                    f"no readable sample for process {self.rank} worker {worker} in epoch {epoch} "
                    f"({bad[0]} bad so far); with {len(self.units)} shard(s) and {slots} reader(s) each needs data",
                )
            epoch, offset = epoch + 1, 0

    def epoch_samples(self, epoch: int, slot: int, slots: int, bad: list[int]) -> Iterator[Sample]:
        """The slot's good samples of ``epoch`` in shuffled order; bad ones are counted into ``bad[0]``."""
        rng = np.random.default_rng([self.seed, epoch, 7])
        order = [self.units[i] for i in seeded_order(rng, len(self.units))]
        by_unit = len(order) >= slots
        mine = order[slot::slots] if by_unit else order
        return self._shuffled(self._read(mine, None if by_unit else (slot, slots), bad), epoch, slot)

    def _read(self, units: Sequence[str], stride: tuple[int, int] | None, bad: list[int]) -> Iterator[Sample]:
        position = 0
        for unit in units:
            for item in self.reader(unit):
                if isinstance(item, ShardError):
                    bad[0] += 1
                    if bad[0] <= _REPORTED:
                        logger.warning("Skipped bad shard input (%d so far in this reader): %s", bad[0], item)
                    continue
                position += 1
                if stride is None or (position - 1) % stride[1] == stride[0]:
                    yield item

    def _shuffled(self, samples: Iterator[Sample], epoch: int, slot: int) -> Iterator[Sample]:
        """A shuffle buffer (WebDataset's ``shuffle(n)``) with draws seeded by ``(seed, epoch, slot)``."""
        size = self.shuffle_buffer
        if size <= 1:
            yield from samples
            return
        rng = np.random.default_rng([self.seed, epoch, slot, 11])
        buffer: list[Sample] = []
        for sample in samples:
            if len(buffer) < size:
                buffer.append(sample)
                continue
            j = int(rng.integers(size))
            yield buffer[j]
            buffer[j] = sample
        for j in seeded_order(rng, len(buffer)):
            yield buffer[j]


@dataclass
class StreamCollate:
    """Collate stream samples into a training batch: the train transform (and Mixup/CutMix), plus the position of
    the batch's last sample under ``stream`` for the checkpoint."""

    transforms: Any
    mixup: Any = None

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.transforms(
            {
                "image": [s["image"] for s in samples],
                "label": [s["label"] for s in samples],
                "index": [s["index"] for s in samples],
            }
        )
        if self.mixup is not None:
            batch = self.mixup.mix(batch["pixel_values"], batch["labels"])
        batch["stream"] = torch.tensor(samples[-1]["stream"], dtype=torch.long)
        return batch
