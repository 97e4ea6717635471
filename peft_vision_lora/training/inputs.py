"""What the loop is fed: the run's data, its training batches and evaluation loaders, and the model that forward and
backward run (the classifier on images, or only its head on a linear probe's cached features)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accelerate import Accelerator
from accelerate.logging import get_logger
from datasets import Dataset, DatasetDict
from torch import nn
from torch.utils.data import DataLoader

from ..data import ImageTransforms, MixupCutmix, load_image_dataset
from .arguments import DataArguments, ModelArguments, TrainingArguments
from .clock import PhaseClock
from .data import RunData, TrainData, class_names, eval_dataloader, train_dataloader
from .features import cache_features
from .stream_data import StreamTrainData, check_stream_options, open_stream_source, stream_train_data

logger = get_logger(__name__)


def load_run_data(data_args: DataArguments, args: TrainingArguments, dataset: Dataset | DatasetDict | None) -> RunData:
    """The run's data, loaded and checked: ``dataset`` if given, else what ``--dataset`` names (or a stream)."""
    source = dataset if dataset is not None else data_args.dataset
    if source is None:
        raise ValueError("No training data: pass --dataset (a folder, a file or a Hub dataset id).")
    # Named in the model card and metrics; an in-memory dataset has no name to record.
    dataset_id = data_args.dataset if dataset is None else None
    source_name = dataset_id or f"in-memory {type(dataset).__name__}"
    stream = open_stream_source(data_args) if dataset is None else None
    if stream is not None:
        check_stream_options(stream, data_args, args)
        card_id = dataset_id if data_args.streaming else None  # a shard pattern is no dataset to name in the card
        return RunData(stream.eval_data, stream.names, source_name, card_id, stream)
    splits = load_image_dataset(
        source,
        format=data_args.dataset_format,
        val_fraction=data_args.val_fraction,
        shots=data_args.shots,
        seed=args.seed,
        on_bad_image=data_args.on_bad_image,
    )
    return RunData(splits, class_names(splits, source_name), source_name, dataset_id)


def build_mixup(num_classes: int, data_args: DataArguments, args: TrainingArguments) -> MixupCutmix | None:
    """Mixup/CutMix as the training collate function; None when both are off."""
    if data_args.mixup_alpha <= 0 and data_args.cutmix_alpha <= 0:
        return None
    return MixupCutmix(
        num_classes,
        data_args.mixup_alpha,
        data_args.cutmix_alpha,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
    )


def train_batches(
    data: RunData,
    transforms: ImageTransforms,
    accelerator: Accelerator,
    data_args: DataArguments,
    args: TrainingArguments,
    mixup: MixupCutmix | None,
) -> TrainData | StreamTrainData:
    """Training batches of a map-style dataset (global batches that Accelerate splits) or of a stream (per process)."""
    if data.stream is not None:
        return stream_train_data(
            data.stream,
            transforms,
            accelerator,
            batch_size=args.per_device_train_batch_size,
            seed=args.seed,
            shuffle_buffer=data_args.shuffle_buffer,
            num_workers=args.dataloader_num_workers,
            on_bad=data_args.on_bad_image,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixup=mixup,
        )
    return train_dataloader(
        data.splits,
        transforms,
        global_batch_size=args.per_device_train_batch_size * accelerator.num_processes,
        seed=args.seed,
        num_workers=args.dataloader_num_workers,
        mixup=mixup,
    )


def eval_loaders(
    data: RunData, splits: list[str], transforms: ImageTransforms, accelerator: Accelerator, args: TrainingArguments
) -> dict[str, DataLoader]:
    return {
        split: eval_dataloader(
            data.splits[split],
            transforms,
            global_batch_size=args.per_device_eval_batch_size * accelerator.num_processes,
            num_workers=args.dataloader_num_workers,
        )
        for split in splits
    }


@dataclass
class StepInputs:
    """What forward and backward run on. The classifier itself stays what checkpoints and the run folder save."""

    step_model: nn.Module
    train: TrainData | StreamTrainData
    eval_loaders: dict[str, DataLoader]
    cache_s: float | None = None  # seconds spent caching features; None: the step model sees images


def use_feature_cache(data: RunData, model_args: ModelArguments, data_args: DataArguments, cache: bool) -> bool:
    """Whether this run is a linear probe on cached features (see ``--cache_features``)."""
    if model_args.method != "linear" or not cache:
        return False
    if data.stream is not None:
        logger.info("Linear probe on a stream: features not cached.", main_process_only=True)
        return False
    image_only = {
        "--auto_augment": data_args.auto_augment,
        "--mixup_alpha": data_args.mixup_alpha,
        "--cutmix_alpha": data_args.cutmix_alpha,
    }
    if any(image_only.values()):
        logger.info(
            "Linear probe on images, features not cached: %s augment images.",
            ", ".join(name for name, value in image_only.items() if value),
            main_process_only=True,
        )
        return False
    return True


def step_inputs(
    model: nn.Module,
    data: RunData,
    train: TrainData | StreamTrainData,
    eval_loaders: dict[str, DataLoader],
    eval_transforms: ImageTransforms,
    accelerator: Accelerator,
    clock: PhaseClock,
    model_args: ModelArguments,
    data_args: DataArguments,
    args: TrainingArguments,
) -> StepInputs:
    """``model`` on the image loaders, or for a linear probe on cached features, its head on loaders of backbone
    features computed once per split (with the eval transform)."""
    if not use_feature_cache(data, model_args, data_args, args.cache_features):
        return StepInputs(model, train, eval_loaders)
    splits = {"train": data.splits["train"], **{s: data.splits[s] for s in eval_loaders}}
    with clock.phase("feature_cache"):
        cache = cache_features(
            model,
            splits,
            eval_transforms,
            accelerator,
            train_batch_size=train.loader.batch_size,
            eval_batch_size=args.per_device_eval_batch_size,
            seed=args.seed,
            num_workers=args.dataloader_num_workers,
        )
    logger.info(
        "Linear probe on cached features: %d-dim features of %s computed in %.1fs.",
        cache.train.loader.dataset.features.shape[-1],
        ", ".join(splits),
        cache.seconds,
        main_process_only=True,
    )
    return StepInputs(cache.step_model, cache.train, cache.eval_loaders, cache.seconds)


def stream_summary(data: RunData, train: Any) -> dict[str, Any]:
    """The stream's part of ``metrics.json``: its source, units and what its readers skipped (all processes call
    it); nothing for map-style data."""
    if data.stream is None:
        return {}
    return {"stream": {"source": data.stream.description, "units": len(data.stream.units), **train.summary()}}
