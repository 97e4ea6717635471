"""Train and eval image transforms for ``datasets``, built from a model's image processor (no torchvision).

Eval reproduces the model's processor with the same PIL operations (resize the short side to ``size / crop_pct``
and center crop, stretch-then-crop for DeiT-style processors, or resize straight to ``size`` for ViT-style ones).
Train is random-resized-crop + horizontal flip, optionally RandAugment/TrivialAugment, in one resampling pass from a
JPEG decoded at reduced scale when the crop allows it. Random draws are keyed by ``(seed, epoch, sample index)``, so
a resumed run sees exactly the augmentations it would have seen.

Typical use::

    train_tf = ImageTransforms.from_pretrained(model_path, train=True)
    eval_tf = ImageTransforms.from_pretrained(model_path, train=False)
    train_ds = train_tf.attach(dataset["train"])  # index column + undecoded images + with_transform
    eval_ds = eval_tf.attach(dataset["test"])
    for epoch in range(epochs):
        train_tf.set_epoch(epoch)  # reaches DataLoader workers, persistent ones included
        for batch in DataLoader(train_ds, batch_size=64, num_workers=8):  # {"pixel_values", "labels"}
            ...

``datasets`` calls a transform with the requested rows only, without their indices, which is why :meth:`attach`
adds an ``index`` column; a transformers ``Trainer`` must keep it (``remove_unused_columns=False``). Plain
``dataset.with_transform(transforms)`` works too, with images decoded by ``datasets`` (no reduced-scale decoding, and
a corrupt file raises there) and samples keyed by a hash of their path or pixels.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import PIL.Image
import torch
from datasets import Dataset, DatasetDict, Image
from torch.utils.data import get_worker_info

from ..processing import Preprocessing
from .augment import Augmentation, auto_augment
from .images import (
    BadImageError,
    Box,
    ImageSource,
    decode_region,
    decode_resized,
    describe,
    open_image,
    source_key,
    upright_size,
)

logger = logging.getLogger(__name__)

OUTPUTS = ("float", "uint8")


@dataclass
class TransformOptions(Augmentation):
    """Augmentation and output options of :class:`ImageTransforms` (the augmentation is ignored at eval)."""

    ratio: tuple[float, float] = field(
        default=(3 / 4, 4 / 3), metadata={"help": "Train: range of the crop aspect ratio (width / height)."}
    )
    output: str = field(default="float", metadata={"help": "'float' (normalised) or 'uint8' (normalise on device)."})
    reduced_decode: bool | None = field(
        default=None,
        metadata={"help": "Decode JPEGs at reduced scale when the crop allows. None: at train only (eval is exact)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the per-sample augmentation draws."})
    num_threads: int | None = field(
        default=None,
        metadata={"help": "Threads decoding a batch. None: up to 8 in the main process, 1 in a DataLoader worker."},
    )
    image_column: str = field(default="image", metadata={"help": "Batch key of the images."})
    label_column: str = field(default="label", metadata={"help": "Batch key of the labels (optional in a batch)."})
    index_column: str = field(default="index", metadata={"help": "Batch key of the sample indices, when present."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.ratio = tuple(self.ratio)
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {self.ratio}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads}")


def normalize_on_device(
    pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Turn ``uint8`` ``(B, 3, H, W)`` pixel values into normalised ``dtype`` on their device.

    Moving uint8 to the accelerator and normalising there is 4x less host-to-device traffic than float32.
    """
    scale = 255.0 if not pixel_values.is_floating_point() else 1.0
    mean_t = torch.as_tensor(mean, dtype=dtype, device=pixel_values.device).view(1, -1, 1, 1) * scale
    std_t = torch.as_tensor(std, dtype=dtype, device=pixel_values.device).view(1, -1, 1, 1) * scale
    # (x / 255 - mean) / std folded into (x - 255 mean) * (1 / (255 std)) on a fresh tensor: the same operations
    # as the host-side float output of ImageTransforms, so both give identical values.
    return pixel_values.to(dtype, copy=True).sub_(mean_t).mul_(1 / std_t)


class ImageTransforms:
    """A ``datasets`` transform: ``{"image": [...], "label": [...]}`` -> ``{"pixel_values", "labels"}`` tensors.

    Images may be ``datasets`` ``{"path", "bytes"}`` dicts (an ``Image(decode=False)`` column, the fast path: JPEGs
    can then be decoded at reduced scale, and decoding errors are handled here), paths, encoded bytes, PIL images or
    uint8 arrays. Output is RGB, ``pixel_values`` float32 normalised ``(B, 3, H, W)`` (or uint8, see
    :func:`normalize_on_device`) and ``labels`` int64 (omitted when the batch has no label column).

    Reproducibility: each train sample draws from ``numpy.random.default_rng([seed, epoch, key])`` where ``key`` is
    the sample's ``index`` column (added by :meth:`attach`) or, without one, a hash of its path or bytes. Set the epoch
    with :meth:`set_epoch`; it is kept in shared memory so persistent DataLoader workers see it.

    A batch is decoded by a few threads when the transform runs in the main process (``num_threads``); in DataLoader
    workers, which already run in parallel, by one.

    An image that fails to decode (past the scan of ``load_image_dataset``) never stops training: it is logged once
    and replaced by a readable sample of the same batch (image and label), else by the last good sample this
    transform produced, else by a mean-colour image.
    """

    def __init__(self, preprocessing: Preprocessing, train: bool = False, options: TransformOptions | None = None):
        self.preprocessing = preprocessing
        self.train = train
        self.options = options or TransformOptions()
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        # The output size, changed by set_size (progressive resolution); shared like the epoch.
        self._size = torch.tensor(preprocessing.size, dtype=torch.int64).share_memory_()
        # Float output is (x - offset) * scale, per channel, computed in float32 like normalize_on_device.
        self._offset = (np.asarray(preprocessing.mean, np.float32) * np.float32(255)).reshape(3, 1, 1)
        self._scale = np.float32(1) / (np.asarray(preprocessing.std, np.float32) * np.float32(255)).reshape(3, 1, 1)
        self._fallback: tuple[torch.Tensor, Any] | None = None
        self._reported: set[str] = set()

    @classmethod
    def from_processor(cls, processor: Any, train: bool = False, **options: Any) -> ImageTransforms:
        """Build from a transformers image processor; ``options`` are :class:`TransformOptions` fields."""
        return cls(Preprocessing.from_processor(processor), train, _options(options))

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike,
        train: bool = False,
        *,
        image_size: int | None = None,
        normalization: str | None = None,
        **options: Any,
    ) -> ImageTransforms:
        """Build from a model's processor (its ``preprocessor_config.json`` or the architecture table defaults).

        ``image_size`` and ``normalization`` are passed to :func:`peft_vision_lora.processing.load_image_processor`;
        ``options`` are :class:`TransformOptions` fields (``scale``, ``hflip``, ``auto_augment``, ``output``, ...).
        """
        from ..processing import load_image_processor

        processor = load_image_processor(model_name_or_path, image_size=image_size, normalization=normalization)
        return cls.from_processor(processor, train, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(train={self.train}, {self.preprocessing}, {self.options})"

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocessing.std

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of ``epoch``; call before iterating the DataLoader of that epoch."""
        self._epoch.fill_(int(epoch))

    @property
    def size(self) -> tuple[int, int]:
        """The (height, width) of the images produced now: ``preprocessing.size`` unless :meth:`set_size` changed it."""
        height, width = self._size.tolist()
        return height, width

    def set_size(self, size: int | tuple[int, int]) -> None:
        """Produce images of ``size`` from now on (a square side or (height, width)), e.g. for progressive
        resolution; like the epoch it reaches DataLoader workers, persistent ones included."""
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be a positive side or (height, width), got {size}")
        self._size.copy_(torch.tensor(size, dtype=torch.int64))

    def __getstate__(self) -> dict[str, Any]:
        # Each DataLoader worker reports its own decoding failures and keeps its own fallback sample.
        return {**self.__dict__, "_fallback": None, "_reported": set()}

    def attach(self, dataset: Dataset | DatasetDict) -> Dataset | DatasetDict:
        """Return ``dataset`` ready for this transform: an ``index`` column (for per-sample seeding), the image column
        left undecoded (so it is decoded here: reduced-scale JPEG decoding, errors handled), and
        ``with_transform(self)``. Works on a ``DatasetDict`` too (same transform on every split)."""
        if isinstance(dataset, DatasetDict):
            return DatasetDict({split: self.attach(ds) for split, ds in dataset.items()})
        column, index = self.options.image_column, self.options.index_column
        if column not in dataset.column_names:
            raise KeyError(f"Image column {column!r} not in the dataset's columns {dataset.column_names}")
        feature = dataset.features[column]
        if isinstance(feature, Image) and feature.decode:
            dataset = dataset.cast_column(column, Image(decode=False))
        if index not in dataset.column_names:
            dataset = dataset.add_column(index, np.arange(len(dataset), dtype=np.int64))
        return dataset.with_transform(self)

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, torch.Tensor]:
        opts = self.options
        if opts.image_column not in batch:
            raise KeyError(f"Image column {opts.image_column!r} not in the batch's keys {list(batch)}")
        images = batch[opts.image_column]
        labels = list(batch[opts.label_column]) if opts.label_column in batch else None
        indices = batch.get(opts.index_column)
        keys = [int(i) for i in indices] if indices is not None else [source_key(image) for image in images]
        out_h, out_w = self.size
        dtype = torch.float32 if opts.output == "float" else torch.uint8
        pixel_values = torch.empty((len(images), 3, out_h, out_w), dtype=dtype)
        # Each image is written (and normalised) straight into its slot of the batch while it is still in cache:
        # no per-image arrays to stack, no batch-sized temporaries.
        slots = list(pixel_values.numpy())
        threads = min(self._threads(), len(images))
        if threads > 1:
            # PIL decodes and torch resizes without the GIL; a pool per batch stays safe across DataLoader forks.
            with ThreadPoolExecutor(threads) as pool:
                done = list(pool.map(self._fill, images, keys, slots))
        else:
            done = [self._fill(image, key, slot) for image, key, slot in zip(images, keys, slots)]
        self._replace_failures(pixel_values, done, labels)
        out = {"pixel_values": pixel_values}
        if labels is not None:
            out["labels"] = torch.as_tensor(labels, dtype=torch.long)
        return out

    def _threads(self) -> int:
        if self.options.num_threads is not None:
            return self.options.num_threads
        return 1 if get_worker_info() is not None else min(8, os.cpu_count() or 1)

    def _fill(self, image: ImageSource, key: int, slot: np.ndarray) -> bool:
        """Transform ``image`` into ``slot`` (``(3, H, W)``); False, reported, when it cannot be decoded."""
        try:
            array = self.transform_image(image, key)
        except BadImageError as exc:
            self._report(exc)
            return False
        self._write(array, slot)
        return True

    def _write(self, array: np.ndarray, slot: np.ndarray) -> None:
        slot[...] = array.transpose(2, 0, 1)  # HWC -> CHW, and uint8 -> float32 for float output
        if slot.dtype != np.uint8:
            slot -= self._offset
            slot *= self._scale

    def transform_image(self, image: ImageSource, key: int = 0) -> np.ndarray:
        """One image -> ``(H, W, 3)`` uint8 array; ``key`` seeds the train augmentations with the epoch."""
        pil = open_image(image)
        try:
            if not self.train:
                return np.asarray(self._eval(pil, image))
            opts = self.options
            rng = np.random.default_rng([opts.seed, self.epoch, key])
            box = random_resized_crop_box(rng, *upright_size(pil), (opts.min_crop_scale, 1.0), opts.ratio)
            region = self._decode(pil, box, opts.reduced_decode is not False, image)
        finally:
            if pil is not image:  # close what we opened, never the caller's image
                pil.close()
        if rng.random() < opts.hflip:
            region = region[:, ::-1]  # a view: the copy into the batch does the flip
        if opts.auto_augment:
            fill = tuple(int(round(255 * m)) for m in self.mean)
            augmented = auto_augment(
                PIL.Image.fromarray(region),
                rng,
                opts.auto_augment,
                num_ops=opts.num_ops,
                magnitude=opts.magnitude,
                fill=fill,
            )
            region = np.asarray(augmented)
        return region

    def _decode(self, pil: PIL.Image.Image, box: Box, reduce: bool, image: ImageSource) -> np.ndarray:
        out_h, out_w = self.size
        return decode_region(
            pil, box, (out_w, out_h), self.preprocessing.resample, reduce=reduce, source=describe(image)
        )

    def _eval(self, pil: PIL.Image.Image, image: ImageSource) -> PIL.Image.Image:
        """transformers' eval geometry: resize (short side to size/crop_pct, or stretch), then center crop."""
        pre = self.preprocessing
        out_h, out_w = self.size
        if pre.crop_pct is None:
            resized, crop = (out_w, out_h), None
        else:
            width, height = upright_size(pil)
            if pre.keep_aspect:
                edge = int(round(min(out_h, out_w) / pre.crop_pct))
                long = int(edge * max(width, height) / min(width, height))  # truncated, as transformers does
                resized = (edge, long) if width <= height else (long, edge)
            else:
                resized = (int(round(out_w / pre.crop_pct)), int(round(out_h / pre.crop_pct)))
            top, left = (resized[1] - out_h) // 2, (resized[0] - out_w) // 2
            crop = (left, top, left + out_w, top + out_h)
        return decode_resized(
            pil, resized, pre.resample, crop=crop, reduce=bool(self.options.reduced_decode), source=describe(image)
        )

    def _report(self, error: BadImageError) -> None:
        if error.source not in self._reported:
            self._reported.add(error.source)
            logger.warning(
                "%s; using a substitute sample (%d unreadable so far in this process)", error, len(self._reported)
            )

    def _replace_failures(self, pixel_values: torch.Tensor, done: list[bool], labels: list[Any] | None) -> None:
        good = [i for i, ok in enumerate(done) if ok]
        if good:
            last = good[-1]
            self._fallback = (pixel_values[last].clone(), labels[last] if labels is not None else None)
        for i in (i for i, ok in enumerate(done) if not ok):
            if good:
                j = min(good, key=lambda g: (abs(g - i), g))
                pixel_values[i] = pixel_values[j]
                if labels is not None:
                    labels[i] = labels[j]
            elif self._fallback is not None:
                pixel_values[i] = self._fallback[0]
                if labels is not None and self._fallback[1] is not None:
                    labels[i] = self._fallback[1]
            else:
                out_h, out_w = self.size
                mean_colour = np.full((out_h, out_w, 3), [round(255 * m) for m in self.mean], dtype=np.uint8)
                self._write(mean_colour, pixel_values[i].numpy())


def random_resized_crop_box(
    rng: np.random.Generator, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[float, float, float, float]:
    """torchvision's ``RandomResizedCrop.get_params`` on a numpy Generator: a crop of ``scale`` of the area and
    aspect ratio in ``ratio`` (log-uniform), falling back to a center crop after 10 tries."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return float(left), float(top), float(left + w), float(top + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    w, h = max(w, 1), max(h, 1)
    top, left = (height - h) // 2, (width - w) // 2
    return float(left), float(top), float(left + w), float(top + h)


def _options(options: Mapping[str, Any]) -> TransformOptions:
    known = {f.name for f in fields(TransformOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"Unknown transform option(s) {unknown}; valid options: {', '.join(sorted(known))}")
    return TransformOptions(**options)
