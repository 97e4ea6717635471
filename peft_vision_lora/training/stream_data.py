"""Training on iterable data (tar shards, ``--streaming``): the per-process loader, its checkpointed position, the
evaluation splits, and the linear-probe head fitted on a prefix of the stream.

Accelerate does not prepare this loader: its iterable-dataset wrappers would have every process read all the data
(and keep a slice) or one process read for all. Here each process reads only its own shards, so a step trains on
``per_device_train_batch_size`` samples of each process's stream, and the batches are moved to the device here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from datasets import ClassLabel, DatasetDict
from torch import nn
from torch.utils.data import DataLoader

from ..data import ImageTransforms, MixupCutmix
from ..data.sample_stream import SampleStream, StreamCollate
from ..data.shard_reader import looks_like_shards
from ..data.stream_sources import EVAL_SPLITS, StreamSource, hub_stream_source, read_whole, shard_source
from .features import FeatureDataset, extract_features

logger = get_logger(__name__)

# Images of the stream's first epoch whose features fit the LP-FT head (all of them when the stream is shorter).
LINEAR_PROBE_SAMPLES = 4096


def open_stream_source(data_args: Any) -> StreamSource | None:
    """The iterable source ``--dataset`` names (shards, or anything with ``--streaming``); None for map-style data."""
    dataset = data_args.dataset
    if data_args.streaming:
        if dataset is None:
            raise ValueError("--streaming needs --dataset (a Hub id or a folder of parquet/arrow files).")
        source = hub_stream_source(dataset, on_bad=data_args.on_bad_image)
    elif looks_like_shards(dataset):
        source = shard_source(
            dataset,
            label_file=data_args.label_file,
            on_bad=data_args.on_bad_image,
            eval_split_patterns=data_args.eval_dataset is None,
        )
    else:
        return None
    if data_args.eval_dataset is not None:
        source.eval_data = eval_splits(data_args.eval_dataset, source.names, data_args)
    check_eval_splits(source.eval_data, source.names, data_args.eval_dataset or dataset)
    return source


def check_stream_options(source: StreamSource, data_args: Any, args: Any) -> None:
    """Options that need a map-style dataset of known length, refused (or warned about) at start."""
    what = "--streaming" if data_args.streaming else "tar shards"
    if args.max_steps <= 0:
        raise ValueError(
            f"--max_steps N is required with {what}: a stream's length is not known up front, so training is "
            "step-based."
        )
    if data_args.resolution_schedule:
        raise ValueError(f"--resolution_schedule needs epochs of a map-style dataset; it does not apply to {what}.")
    for kind in ("eval", "save"):
        if getattr(args, f"{kind}_strategy") == "epoch" and not source.num_samples:
            logger.warning(
                "--%s_strategy epoch with %s of unknown length: no epoch ends, so only the end of the run counts; "
                "pass --%s_steps N.",
                kind,
                what,
                kind,
                main_process_only=True,
            )


def eval_splits(spec: str, names: Sequence[str], data_args: Any) -> DatasetDict:
    """``--eval_dataset``: shards (a pattern, its split from the file name, or a shard folder's validation/test
    splits) or anything ``load_image_dataset`` reads (its validation/test splits; a folder without splits is test)."""
    options = {"label_file": data_args.label_file, "format": data_args.dataset_format, "on_bad": data_args.on_bad_image}
    data = read_whole(spec, names=names, **options)
    if looks_like_shards(spec):
        return data
    return DatasetDict({s: data[s] for s in EVAL_SPLITS if s in data} or {"test": data["train"]})


def check_eval_splits(data: DatasetDict, names: Sequence[str], source: str) -> None:
    for split, ds in data.items():
        if len(ds) == 0:
            raise ValueError(f"The {split!r} split of {source} is empty: no images to evaluate on.")
        feature = ds.features.get("label")
        if not isinstance(feature, ClassLabel) or list(feature.names) != list(names):
            found = feature.names if isinstance(feature, ClassLabel) else feature
            raise ValueError(
                f"The {split!r} split of {source} has classes {found}, but the training shards' label file has "
                f"{list(names)}: evaluation must use the same classes, in the same order."
            )


@dataclass
class StreamTrainData:
    """This process's training batches, endless, and the stream position a checkpoint restores: the methods of
    :class:`~peft_vision_lora.training.data.TrainData`, for iterable data."""

    dataset: SampleStream
    loader: DataLoader
    batch_size: int
    num_workers: int
    device: torch.device
    batches_per_epoch: int  # nominal (the known length over the global batch); 0: length unknown
    positions: dict[int, tuple[int, int]] = field(default_factory=dict)
    skipped: dict[int, int] = field(default_factory=dict)
    next_worker: int = 0

    @property
    def workers(self) -> int:
        return max(self.num_workers, 1)

    def prepare(self, accelerator: Accelerator) -> None:
        """Nothing to prepare: each process reads its own shards and batches are moved to its device here."""

    def epoch(self, epoch: int, skip: int, accelerator: Accelerator) -> Iterator[dict[str, torch.Tensor]]:
        """Every batch from the restored position on: a stream has no epochs to restart, so this never ends."""
        return iter(self)

    def set_size(self, size: int) -> None:
        raise ValueError("Progressive resolution needs epochs of a map-style dataset, not a stream.")

    def gather_state(self) -> list[dict[str, Any]]:
        """Every process's position in its own stream, in process order (all processes must call it)."""
        return gather_object([self.position()])

    def load_state(self, saved: list[dict[str, Any]] | None, accelerator: Accelerator, checkpoint: Any) -> None:
        saved = saved or []
        if len(saved) != accelerator.num_processes:
            raise ValueError(
                f"{checkpoint} holds the stream positions of {len(saved)} process(es), this run has "
                f"{accelerator.num_processes}: resume with the same number of processes."
            )
        self.load_position(saved[accelerator.process_index], checkpoint)

    def summary(self) -> dict[str, Any]:
        """Bad samples and shards every reader met (since the resume, for a resumed run); all processes call it."""
        return {"skipped_bad_samples": sum(gather_object([sum(self.skipped.values())]))}

    def position(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "units": len(self.dataset.units),
            "shuffle_buffer": self.dataset.shuffle_buffer,
            "next_worker": self.next_worker,
            "positions": {str(w): list(p) for w, p in sorted(self.positions.items())},
        }

    def load_position(self, state: dict[str, Any], checkpoint: Any) -> None:
        """Continue after the last sample each worker had delivered when ``checkpoint`` was written."""
        mine = {k: state.get(k) for k in ("batch_size", "num_workers", "units", "shuffle_buffer")}
        now = {"batch_size": self.batch_size, "num_workers": self.num_workers, "units": len(self.dataset.units),
               "shuffle_buffer": self.dataset.shuffle_buffer}  # fmt: skip
        if mine != now:
            differ = ", ".join(f"{k} {mine[k]} -> {now[k]}" for k in now if mine[k] != now[k])
            raise ValueError(
                f"{checkpoint} was written by a stream with other settings ({differ}): resume with the same shards, "
                "--per_device_train_batch_size, --dataloader_num_workers and --shuffle_buffer."
            )
        self.positions = {int(w): (int(p[0]), int(p[1])) for w, p in state["positions"].items()}
        self.next_worker = int(state["next_worker"])
        self.dataset.start, self.dataset.first_worker = dict(self.positions), self.next_worker

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.loader:
            worker, epoch, offset, skipped = batch.pop("stream").tolist()
            self.positions[worker], self.skipped[worker] = (epoch, offset), skipped
            self.next_worker = (worker + 1) % self.workers
            yield {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}


def stream_train_data(
    source: StreamSource,
    transforms: ImageTransforms,
    accelerator: Accelerator,
    *,
    batch_size: int,
    seed: int,
    shuffle_buffer: int,
    num_workers: int,
    on_bad: str,
    gradient_accumulation_steps: int = 1,
    mixup: MixupCutmix | None = None,
) -> StreamTrainData:
    dataset = SampleStream(
        source.units,
        source.reader,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        on_bad=on_bad,
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=StreamCollate(transforms, mixup),
        # Its own generator, so creating the iterator never advances the global RNG (as for map-style data).
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
    # Nominal epochs (the log, --eval_strategy epoch) when the length is known.
    global_batch = batch_size * accelerator.num_processes * gradient_accumulation_steps
    nominal = (source.num_samples or 0) // global_batch * gradient_accumulation_steps
    return StreamTrainData(dataset, loader, batch_size, num_workers, accelerator.device, nominal)


@torch.no_grad()
def stream_prefix_features(
    source: StreamSource,
    transforms: ImageTransforms,
    model: nn.Module,
    head: nn.Module,
    accelerator: Accelerator,
    forward_kwargs: dict[str, Any],
    *,
    seed: int,
    shuffle_buffer: int,
    batch_size: int,
    limit: int | None = None,
) -> FeatureDataset:
    """Head inputs (eval transform) for the first ``limit`` images (at most :data:`LINEAR_PROBE_SAMPLES`) of the
    stream's first epoch, each process reading its own part, gathered in process order so every process fits the
    same head."""
    limit = math.ceil(min(limit or LINEAR_PROBE_SAMPLES, LINEAR_PROBE_SAMPLES) / accelerator.num_processes)
    dataset = SampleStream(
        source.units, source.reader, seed=seed, shuffle_buffer=shuffle_buffer, rank=accelerator.process_index,
        world_size=accelerator.num_processes, epochs=1, limit=limit,
    )  # fmt: skip
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=StreamCollate(transforms))
    mine = extract_features(model, head, loader, accelerator, forward_kwargs, gather=False)
    parts = gather_object([(mine.features, mine.labels)])
    return FeatureDataset(torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts]))
