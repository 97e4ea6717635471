"""What ``--dataset`` names when it is not read whole: tar shards (a brace pattern or a ``peft-vision-lora shard``
folder) or, with ``--streaming``, a ``datasets`` streaming dataset (Hub id, parquet folder). Nothing is listed or
scanned up front: the units to stream are known from the pattern (or the streaming dataset's shards), and the
evaluation splits, which are small, are read into ordinary ``Dataset`` objects.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

from .loading import load_image_dataset
from .sample_stream import ShardReader
from .shard_reader import (
    MANIFEST,
    Sample,
    ShardError,
    expand_pattern,
    find_label_file,
    iter_shard,
    looks_like_shards,
    read_label_file,
)

logger = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "test")
_SPLIT_PREFIXES = {"val": "validation", "valid": "validation", "validation": "validation", "test": "test"}


@dataclass
class StreamSource:
    """An iterable training split: its units and reader, class names, and the evaluation splits read whole."""

    description: str
    units: list[str]
    reader: Any
    names: list[str]
    num_samples: int | None = None  # known from a manifest or the dataset's metadata; else None
    eval_data: DatasetDict = field(default_factory=DatasetDict)


def shard_source(
    dataset: str, *, label_file: str | None = None, on_bad: str = "skip", eval_split_patterns: bool = True
) -> StreamSource:
    """Tar shards named by a pattern, or a folder written by ``peft-vision-lora shard`` (its ``shards.json`` names
    the train pattern, the sample counts and the evaluation splits)."""
    folder = Path(dataset)
    num_samples, eval_patterns = None, {}
    if "{" not in dataset and (folder / MANIFEST).is_file():
        manifest = json.loads((folder / MANIFEST).read_text())
        splits = manifest.get("splits", {})
        if "train" not in splits:
            raise ValueError(f"{folder / MANIFEST} has no train split (splits: {list(splits)})")
        urls = expand_pattern(str(folder / splits["train"]["pattern"]))
        num_samples = splits["train"].get("samples")
        eval_patterns = {s: str(folder / splits[s]["pattern"]) for s in EVAL_SPLITS if s in splits}
        label_path = Path(label_file) if label_file else folder / manifest.get("labels", "labels.txt")
    else:
        urls = expand_pattern(dataset)
        label_path = Path(label_file) if label_file else find_label_file(urls)
    names = read_label_file(label_path)
    source = StreamSource(f"shards {dataset}", urls, ShardReader(names, on_bad), names, num_samples)
    if eval_split_patterns and eval_patterns:
        source.eval_data = DatasetDict(
            {split: read_shards_as_dataset(expand_pattern(p), names, on_bad) for split, p in eval_patterns.items()}
        )
    return source


def read_shards_as_dataset(urls: Sequence[str], names: Sequence[str], on_bad: str = "skip") -> Dataset:
    """Every good sample of ``urls`` (in order) as a ``Dataset`` of encoded images and labels: for evaluation
    splits, small enough to hold; bad input is counted and named in one warning, as ``load_image_dataset`` does."""
    images, labels, bad = [], [], []
    for url in urls:
        for item in iter_shard(url, names, on_bad):
            if isinstance(item, ShardError):
                bad.append(item)
                continue
            images.append({"bytes": item.image, "path": item.name})
            labels.append(item.label)
    if bad:
        listing = "\n".join(f"  {error}" for error in bad[:20])
        logger.warning("Skipped %d bad sample(s) or shard(s) of %s:\n%s", len(bad), urls[0], listing)
    features = Features({"image": Image(decode=False), "label": ClassLabel(names=list(names))})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def shard_eval_splits(
    spec: str, *, names: Sequence[str] | None = None, label_file: str | None = None, on_bad: str = "skip"
) -> DatasetDict:
    """Evaluation splits read whole from shards: a shard folder's validation/test splits, or one pattern's samples
    under the split its file name says (``test-{...}.tar`` -> test), labelled by ``names`` when given (the training
    classes), else by the label file."""
    if "{" not in spec and (Path(spec) / MANIFEST).is_file():
        return shard_source(spec, label_file=label_file, on_bad=on_bad).eval_data
    urls = expand_pattern(spec)
    names = list(names) if names is not None else read_label_file(label_file or find_label_file(urls))
    return DatasetDict({split_of_pattern(spec): read_shards_as_dataset(urls, names, on_bad)})


def read_whole(
    source: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    label_file: str | None = None,
    format: str | None = None,
    on_bad: str = "skip",
) -> DatasetDict:
    """Data to evaluate on, read whole: shards (a pattern or a shard folder, see :func:`shard_eval_splits`) or
    anything :func:`~peft_vision_lora.data.load_image_dataset` reads."""
    if looks_like_shards(source):
        return shard_eval_splits(os.fspath(source), names=names, label_file=label_file, on_bad=on_bad)
    return load_image_dataset(source, format=format, on_bad_image=on_bad)


def split_of_pattern(pattern: str) -> str:
    """The split a shard pattern holds, from its file name (``test-{...}.tar`` -> test); ``test`` when unsaid."""
    base = os.path.basename(pattern).lower()
    for prefix, split in _SPLIT_PREFIXES.items():
        if base.startswith((prefix + "-", prefix + "_", prefix + ".")):
            return split
    return "test"


# ------------------------------------------------------------------------------------------ datasets streaming


@dataclass
class HubShardReader:
    """Reads one shard of a ``datasets`` streaming dataset as checked samples (images left encoded)."""

    dataset: Any  # datasets.IterableDataset with the image column not decoded
    image_column: str
    label_column: str
    names: Sequence[str]
    on_bad: str = "skip"

    def __call__(self, unit: str) -> Iterator[Sample | ShardError]:
        index = int(unit.rsplit("#", 1)[1])
        part = self.dataset.shard(num_shards=self.dataset.num_shards, index=index)
        # .iter(), not iter(): inside a DataLoader worker the latter would split the one shard among workers again.
        rows = ((image, label) for batch in part.iter(batch_size=64)
                for image, label in zip(batch[self.image_column], batch[self.label_column]))  # fmt: skip
        for row, (image, label) in enumerate(rows):
            key = f"{index}-{row}"
            error = None
            if not image or not (image.get("bytes") or image.get("path")):
                error = ShardError(unit, "no image", key)
            elif not isinstance(label, int) or not 0 <= label < len(self.names):
                error = ShardError(unit, f"label {label!r} is not one of the {len(self.names)} classes", key)
            if error is not None:
                if self.on_bad == "error":
                    raise error
                yield error
                continue
            data = image.get("bytes") or Path(image["path"]).read_bytes()
            yield Sample(unit, key, "jpg", data, label)


def _columns(features: Any, source: str) -> tuple[str, str]:
    if features is None:
        raise ValueError(
            f"{source}: the streaming dataset declares no features; its image and label columns are unknown"
        )
    images = [name for name, f in features.items() if isinstance(f, Image)]
    labels = [name for name, f in features.items() if isinstance(f, ClassLabel)]
    if not images or not labels:
        raise ValueError(f"{source}: streaming needs an Image column and a ClassLabel column, got {dict(features)}")
    return images[0], labels[0]


def hub_stream_source(dataset: str, *, on_bad: str = "skip") -> StreamSource:
    """A Hub dataset id or a local folder of parquet/arrow files, opened with ``datasets`` streaming."""
    from datasets import load_dataset

    streams = load_dataset(dataset, streaming=True)
    if "train" not in streams:
        raise ValueError(f"{dataset} has no train split (splits: {list(streams)})")
    train = streams["train"]
    image_column, label_column = _columns(train.features, dataset)
    names = list(train.features[label_column].names)
    undecoded = train.cast_column(image_column, Image(decode=False))
    units = [f"{dataset}#{i}" for i in range(undecoded.num_shards)]
    reader = HubShardReader(undecoded, image_column, label_column, names, on_bad)
    info = getattr(train, "info", None)
    split_info = (info.splits or {}).get("train") if info is not None and info.splits else None
    source = StreamSource(f"streaming {dataset}", units, reader, names, getattr(split_info, "num_examples", None))
    evals = {}
    for split in EVAL_SPLITS:
        if split in streams:
            part = streams[split].cast_column(image_column, Image(decode=False))
            rows = list(part.select_columns([image_column, label_column]))
            features = Features({"image": Image(decode=False), "label": ClassLabel(names=names)})
            evals[split] = Dataset.from_dict(
                {"image": [r[image_column] for r in rows], "label": [r[label_column] for r in rows]}, features=features
            )
    source.eval_data = DatasetDict(evals)
    return source
