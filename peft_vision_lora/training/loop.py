"""The one training loop, behind ``peft-vision-lora train``, ``examples/train.py`` and :func:`peft_vision_lora.train`.

Accelerate runs it on one CPU, one GPU or many processes. Each optimizer step consumes one global batch, split
across processes, so results do not depend on how many processes share the work; checkpoints restore the exact
position in the data, the optimizer, the schedule and all RNG states.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm

from ..data import ImageTransforms, MixupCutmix, load_image_dataset
from ..processing import load_image_processor
from ..resizing import native_image_size
from ..token_dropout import TokenDropout
from .arguments import (
    DEFAULT_LEARNING_RATES,
    DataArguments,
    ModelArguments,
    TrainingArguments,
    args_from_options,
    to_command,
)
from .checkpointing import (
    TrainerState,
    best_model_path,
    load_checkpoint,
    load_trainable_state_dict,
    resolve_checkpoint,
    save_best,
    save_checkpoint,
)
from .data import check_same_classes, class_names, eval_dataloader, train_dataloader
from .ema import EMA
from .evaluation import evaluate_model, model_inputs
from .features import FeatureDataset, backbone_features, cache_features, fit_linear_head, trainable_linear
from .hub import push_to_hub
from .launch import check_launch
from .model import build_training_model, enable_gradient_checkpointing, forward_kwargs, head_module
from .optim import build_optimizer, build_scheduler, warmup_steps
from .outputs import HEADLINE_METRICS, LOG_FILE, append_log, prepare_output_dir, write_log, write_run_folder
from .precision import launch_device, resolve_mixed_precision
from .streams import StreamTrainData, open_stream_source, stream_prefix_features, stream_train_data

logger = get_logger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients became NaN/inf; the run stopped before applying that update."""


def train(
    model_args: ModelArguments | None = None,
    data_args: DataArguments | None = None,
    training_args: TrainingArguments | None = None,
    *,
    dataset: str | Dataset | DatasetDict | None = None,
    command: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Fine-tune, evaluate and save a classifier; returns the contents of ``metrics.json``.

    Pass the three argument dataclasses (as :func:`parse_args` returns them), or the same options by name::

        train(dataset="flowers/", output_dir="runs/flowers-lora", num_train_epochs=3, image_size=112)

    ``dataset`` may also be a ``Dataset``/``DatasetDict`` with image and label columns, used instead of
    ``data_args.dataset``. ``command`` goes into the model card; by default the equivalent ``peft-vision-lora train``
    command.
    """
    given = [a for a in (model_args, data_args, training_args) if a is not None]
    if not given:
        if isinstance(dataset, (str, os.PathLike)):
            options, dataset = {**options, "dataset": os.fspath(dataset)}, None
        model_args, data_args, training_args = args_from_options(options)
    elif len(given) != 3 or options:
        raise TypeError("Pass either all three argument dataclasses or options by name, not a mix of both.")
    return Trainer(model_args, data_args, training_args, dataset=dataset, command=command).train()


class Trainer:
    """One run: everything is built (and checked) in the constructor, :meth:`train` does the rest."""

    def __init__(
        self,
        model_args: ModelArguments,
        data_args: DataArguments,
        training_args: TrainingArguments,
        *,
        dataset: Dataset | DatasetDict | None = None,
        command: str | None = None,
    ) -> None:
        self.model_args, self.data_args, self.args = model_args, data_args, training_args
        self.output_dir = Path(training_args.output_dir)
        self.command = command or to_command(model_args, data_args, training_args)
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(training_args, launch_device()),
            gradient_accumulation_steps=training_args.gradient_accumulation_steps,
            # The dataloader yields global batches and each process takes its slice: every step sees the same
            # samples for any number of processes, and so the result is the same (up to float reduction order).
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            log_with=None if training_args.report_to == "none" else training_args.report_to,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "runs")
            ),
        )
        check_launch(self.accelerator.num_processes)
        set_seed(training_args.seed)
        self._load_data(dataset)
        self._build_model()
        # Everything that can be refused is checked before the output folder is touched.
        self.resume = (
            resolve_checkpoint(self.output_dir, training_args.resume_from_checkpoint)
            if training_args.resume_from_checkpoint
            else None
        )
        if self.resume is not None:
            check_same_classes(self.labels, TrainerState.load(self.resume).labels, self.resume)
        prepare_output_dir(
            self.accelerator,
            self.output_dir,
            resuming=self.resume is not None,
            overwrite=training_args.overwrite_output_dir,
        )
        self._build_dataloaders()
        self._build_optimization()
        # step_model is what forward and backward run: the model itself, or only its head on cached features.
        # self.model stays the whole classifier, which checkpoints, best weights and the run folder save.
        # A stream is read per process (streams.py): Accelerate prepares the map-style training loader only.
        train_loaders = [] if self.stream is not None else [self.train_data.loader]
        self.step_model, self.optimizer, *loaders = self.accelerator.prepare(
            self.step_model, self.optimizer, *train_loaders, *self.eval_loaders.values()
        )
        if self.stream is None:
            self.train_loader, *loaders = loaders
        if not self.cached:
            self.model = self.step_model
        self.eval_loaders = dict(zip(self.eval_loaders, loaders))
        self.state = TrainerState(labels=self.labels, batches_per_epoch=self.batches_per_epoch)
        unwrapped = self.accelerator.unwrap_model(self.model)
        self.ema = EMA(unwrapped, training_args.ema_decay) if training_args.ema_decay > 0 else None
        self.token_dropout = (
            TokenDropout(
                unwrapped, training_args.token_keep, seed=training_args.seed, min_tokens=training_args.token_keep_min
            )
            if training_args.token_keep < 1 and model_args.method != "linear"
            else None
        )
        self.data_wait_s = 0.0  # time the training loop waited for its next batch
        self.eval_s = self.last_eval_s = 0.0  # time spent evaluating, which training_seconds leaves out
        self.started: float | None = None
        self.last_checkpoint = self.resume
        self.eval_metrics: dict[str, Any] | None = None  # of the latest evaluation, at step eval_step
        self.eval_step = -1

    # ------------------------------------------------------------------------------------------------------ setup

    def _load_data(self, dataset: Dataset | DatasetDict | None) -> None:
        source = dataset if dataset is not None else self.data_args.dataset
        if source is None:
            raise ValueError("No training data: pass --dataset (a folder, a file or a Hub dataset id).")
        # Named in the model card and metrics; an in-memory dataset has no name to record.
        self.dataset_id = self.data_args.dataset if dataset is None else None
        self.source_name = self.dataset_id or f"in-memory {type(dataset).__name__}"
        self.stream_source = open_stream_source(self.data_args) if dataset is None else None
        if self.stream_source is not None:
            self._check_stream_options()
            if not self.data_args.streaming:
                self.dataset_id = None  # a shard pattern is no Hub dataset to name in the card
            self.data, self.labels = self.stream_source.eval_data, self.stream_source.names
            return
        self.data = load_image_dataset(
            source,
            format=self.data_args.dataset_format,
            val_fraction=self.data_args.val_fraction,
            shots=self.data_args.shots,
            seed=self.args.seed,
            on_bad_image=self.data_args.on_bad_image,
        )
        self.labels = class_names(self.data, self.source_name)

    def _check_stream_options(self) -> None:
        args, what = self.args, "tar shards" if not self.data_args.streaming else "--streaming"
        if args.max_steps <= 0:
            raise ValueError(
                f"--max_steps N is required with {what}: a stream's length is not known up front, so training is "
                "step-based."
            )
        if self.data_args.resolution_schedule:
            raise ValueError(f"--resolution_schedule needs epochs of a map-style dataset; it does not apply to {what}.")
        for kind in ("eval", "save"):
            if getattr(args, f"{kind}_strategy") == "epoch" and not self.stream_source.num_samples:
                logger.warning(
                    "--%s_strategy epoch with %s of unknown length: no epoch ends, so only the end of the run "
                    "counts; pass --%s_steps N.",
                    kind,
                    what,
                    kind,
                    main_process_only=True,
                )

    def _build_model(self) -> None:
        with self.accelerator.main_process_first():  # the default backbone is converted once, by the first process
            if self.model_args.model:
                self.base = self.model_args.model
            else:
                from ..offline.backbone import default_model_path

                self.base = default_model_path()
        self.model = build_training_model(self.model_args, self.base, self.labels, image_size=self.data_args.image_size)
        self.target_size = native_image_size(self.model)
        schedule = self.data_args.resolution_schedule
        if schedule and schedule[-1] != self.target_size:  # checked here: only the model knows its own size
            source = "--image_size" if self.data_args.image_size else "the checkpoint's; --image_size changes it"
            raise ValueError(
                f"--resolution_schedule must end at the target size {self.target_size} ({source}), got {schedule}."
            )
        if self.args.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.processor = load_image_processor(
            self.base, image_size=self.data_args.image_size, normalization=self.model_args.normalization
        )

    def _build_dataloaders(self) -> None:
        args, n = self.args, self.accelerator.num_processes
        train_tf = ImageTransforms.from_processor(
            self.processor, train=True, **self.data_args.transform_options(args.seed)
        )
        self.eval_tf = eval_tf = ImageTransforms.from_processor(self.processor, train=False)
        self.forward_kwargs = forward_kwargs(self.model, train_tf.size[0])
        self.step_model, self.cached, self.features_runtime = self.model, self._use_feature_cache(), 0.0
        self.mixup = None
        if self.data_args.mixup_alpha > 0 or self.data_args.cutmix_alpha > 0:
            self.mixup = MixupCutmix(
                len(self.labels),
                self.data_args.mixup_alpha,
                self.data_args.cutmix_alpha,
                label_smoothing=args.label_smoothing,
                seed=args.seed,
            )
        self.stream: StreamTrainData | None = None
        if self.stream_source is not None:
            self.stream = stream_train_data(
                self.stream_source,
                train_tf,
                self.accelerator,
                batch_size=args.per_device_train_batch_size,
                seed=args.seed,
                shuffle_buffer=self.data_args.shuffle_buffer,
                num_workers=args.dataloader_num_workers,
                on_bad=self.data_args.on_bad_image,
                mixup=self.mixup,
            )
        else:
            self.train_data = train_dataloader(
                self.data,
                train_tf,
                global_batch_size=args.per_device_train_batch_size * n,
                seed=args.seed,
                num_workers=args.dataloader_num_workers,
                mixup=self.mixup,
            )
        # A validation split evaluates during training and selects the best weights; without one the test split is
        # only watched, never used to select (that would leak it into the reported result).
        splits = [s for s in ("validation", "test") if s in self.data]
        self.eval_split = splits[0] if splits and args.eval_strategy != "no" else None
        self.test_split = "test" if "test" in self.data and self.eval_split != "test" else None
        self.eval_loaders = {
            split: eval_dataloader(
                self.data[split],
                eval_tf,
                global_batch_size=args.per_device_eval_batch_size * n,
                num_workers=args.dataloader_num_workers,
            )
            for split in (self.eval_split, self.test_split)
            if split
        }
        if self.cached:
            self._cache_features()
        self.train_forward_kwargs = self.forward_kwargs  # progressive resolution changes it per stage

    def _use_feature_cache(self) -> bool:
        """Whether this run is a linear probe on cached features (see ``--cache_features``)."""
        if self.model_args.method != "linear" or not self.args.cache_features:
            return False
        if self.stream_source is not None:
            logger.info("Linear probe on a stream: features not cached.", main_process_only=True)
            return False
        data_args = self.data_args
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

    def _backbone_features(self, dataset: Dataset) -> FeatureDataset:
        """What the head receives for every image of ``dataset`` (eval transform), gathered on every process."""
        return backbone_features(
            self.model,
            dataset,
            self.eval_tf,
            self.accelerator,
            batch_size=self.args.per_device_eval_batch_size,
            num_workers=self.args.dataloader_num_workers,
            forward_kwargs=self.forward_kwargs,
        )

    def _cache_features(self) -> None:
        """Replace the image loaders by loaders of backbone features, computed once per split (eval transform)."""
        args = self.args
        splits = {"train": self.data["train"], **{split: self.data[split] for split in self.eval_loaders}}
        cache = cache_features(
            self.model,
            splits,
            self.eval_tf,
            self.accelerator,
            train_batch_size=self.train_data.loader.batch_size,
            eval_batch_size=args.per_device_eval_batch_size,
            seed=args.seed,
            num_workers=args.dataloader_num_workers,
            forward_kwargs=self.forward_kwargs,
        )
        self.train_data, self.eval_loaders, self.step_model = cache.train, cache.eval_loaders, cache.step_model
        self.forward_kwargs, self.features_runtime = {}, cache.seconds
        logger.info(
            "Linear probe on cached features: %d-dim features of %s computed in %.1fs.",
            cache.train.loader.dataset.features.shape[-1],
            ", ".join(splits),
            cache.seconds,
            main_process_only=True,
        )

    def _build_optimization(self) -> None:
        args = self.args
        if self.stream is not None:  # nominal epochs, when the stream's length is known; 0: unknown
            known = self.stream_source.num_samples or 0
            self.batches_per_epoch = known // self.global_batch_size * args.gradient_accumulation_steps
        else:
            self.batches_per_epoch = len(self.train_data.loader)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / args.gradient_accumulation_steps)
        epochs_steps = math.ceil(args.num_train_epochs * self.steps_per_epoch)
        self.total_steps = args.max_steps if args.max_steps > 0 else max(epochs_steps, args.min_steps)
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch) if self.steps_per_epoch else 1
        self.optimizer = build_optimizer(
            self.model,
            learning_rate=args.learning_rate or DEFAULT_LEARNING_RATES[self.model_args.method],
            weight_decay=args.weight_decay,
            head_lr=args.head_lr,
        )
        warmup = warmup_steps(self.total_steps, warmup_ratio=args.warmup_ratio, warmup_steps=args.warmup_steps)
        self.scheduler = build_scheduler(
            self.optimizer, args.lr_scheduler_type, total_steps=self.total_steps, num_warmup_steps=warmup
        )

    @property
    def global_batch_size(self) -> int:
        """Images per optimizer step, over all processes."""
        args = self.args
        return args.per_device_train_batch_size * self.accelerator.num_processes * args.gradient_accumulation_steps

    # ------------------------------------------------------------------------------------------------------- run

    def train(self) -> dict[str, Any]:
        if self.resume is not None:
            self.state = load_checkpoint(
                self.accelerator,
                self.resume,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                ema=self.ema,
            )
            if self.state.batches_per_epoch != self.batches_per_epoch:
                raise ValueError(
                    f"{self.resume} was written with {self.state.batches_per_epoch} batches per epoch, this run has "
                    f"{self.batches_per_epoch}: resume with the same data and global batch size."
                )
            if self.stream is not None:
                saved = self.state.data_state or []
                if len(saved) != self.accelerator.num_processes:
                    raise ValueError(
                        f"{self.resume} holds the stream positions of {len(saved)} process(es), this run has "
                        f"{self.accelerator.num_processes}: resume with the same number of processes."
                    )
                self.stream.load_state_dict(saved[self.accelerator.process_index], self.resume)
        self._start_logging()
        self.started = started = time.perf_counter()
        if self.resume is None and self.args.head_init == "linear_probe" and self.model_args.method != "linear":
            self._linear_probe_init()
        self._fit()
        if self.token_dropout is not None:
            self.token_dropout.remove()
        if self.ema is not None:  # from here on the model holds the averaged weights: evaluated and saved as such
            self.ema.copy_to_model()
            self.ema = None
        runtime, self.train_s = time.perf_counter() - started, self.training_seconds
        results = self._final_results(runtime)
        if self.accelerator.is_main_process:
            self._write_outputs(results)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return results

    def _fit(self) -> None:
        args, state, accelerator = self.args, self.state, self.accelerator
        progress = tqdm(
            total=self.total_steps,
            initial=state.global_step,
            desc="train",
            dynamic_ncols=True,
            disable=args.disable_tqdm or not accelerator.is_local_main_process,
        )
        self._loss_sum, self._loss_count = torch.zeros((), device=accelerator.device), 0
        self.step_model.train()
        stream = iter(self.stream) if self.stream is not None else None  # endless; positioned by the checkpoint
        while state.global_step < self.total_steps:
            if stream is not None:
                batches = stream
            else:
                self.train_data.set_epoch(state.epoch)
                self.train_loader.set_epoch(state.epoch)
                self._set_resolution(state.epoch)
                loader = self.train_loader
                if state.batches_in_epoch:  # resuming mid-epoch: the same order, minus what was already trained on
                    loader = accelerator.skip_first_batches(self.train_loader, state.batches_in_epoch)
                batches = iter(loader)
            while True:
                waited = time.perf_counter()
                batch = next(batches, None)
                self.data_wait_s += time.perf_counter() - waited
                if batch is None:
                    break
                grad_norm = self._training_step(batch)
                state.batches_in_epoch += 1
                if grad_norm is None:  # accumulating: no optimizer step yet
                    continue
                self.scheduler.step()
                state.global_step += 1
                if self.ema is not None:
                    self.ema.update(state.global_step)
                progress.update(1)
                epoch_done = state.batches_in_epoch == self.batches_per_epoch
                if epoch_done:
                    state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                self._after_step(grad_norm, epoch_done, progress)
                if state.global_step >= self.total_steps:
                    break
        progress.close()

    def _set_resolution(self, epoch: int) -> None:
        """Progressive resolution: the train size of ``epoch``'s stage (equal stages of the run's epochs)."""
        schedule = self.data_args.resolution_schedule
        if not schedule or self.stream is not None or self.train_data.transforms is None:
            return
        size = schedule[min(len(schedule) - 1, epoch * len(schedule) // self.num_epochs)]
        self.train_data.transforms.set_size(size)
        self.train_forward_kwargs = forward_kwargs(self.model, size)

    def _linear_probe_init(self) -> None:
        """LP-FT: fit the head on cached features of the training images before any backbone weight moves."""
        started = time.perf_counter()
        head = head_module(self.accelerator.unwrap_model(self.model))
        if self.stream is not None:  # a prefix of the stream: the whole of it is not known, nor needed
            features = stream_prefix_features(
                self.stream_source,
                self.eval_tf,
                self.accelerator.unwrap_model(self.model),
                head,
                self.accelerator,
                self.forward_kwargs,
                seed=self.args.seed,
                shuffle_buffer=self.data_args.shuffle_buffer,
                batch_size=self.args.per_device_eval_batch_size,
            )
        else:
            features = self._backbone_features(self.data["train"])
        train_accuracy = fit_linear_head(trainable_linear(head), features)
        logger.info(
            "Head initialised by a linear probe on %d cached features in %.1fs (train top-1 %.3f).",
            len(features),
            time.perf_counter() - started,
            train_accuracy,
            main_process_only=True,
        )

    def _training_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Forward and backward one batch; returns the gradient norm when it completed an optimizer step."""
        args, accelerator, grad_norm = self.args, self.accelerator, None
        if self.token_dropout is not None:
            state, rows = self.state, len(batch["labels"])
            first = accelerator.process_index * rows
            self.token_dropout.set_batch(
                state.epoch * self.batches_per_epoch + state.batches_in_epoch,
                slice(first, first + rows),
                rows * accelerator.num_processes,
            )
        with accelerator.accumulate(self.step_model):
            logits = self.step_model(**model_inputs(batch), **self.train_forward_kwargs).logits
            # With Mixup/CutMix the labels are soft targets that already carry the label smoothing.
            smoothing = 0.0 if self.mixup else args.label_smoothing
            loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=smoothing)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(self._stop_message(f"Training loss is {loss.item()}"))
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(self.step_model.parameters(), args.max_grad_norm or math.inf)
                # Under fp16 the grad scaler skips steps with inf gradients by design.
                if not args.fp16 and not torch.isfinite(grad_norm):
                    raise NonFiniteLossError(self._stop_message(f"Gradient norm is {grad_norm.item()}"))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._loss_sum += loss.detach()
        self._loss_count += 1
        return grad_norm

    def _after_step(self, grad_norm: torch.Tensor, epoch_done: bool, progress: tqdm) -> None:
        args, step = self.args, self.state.global_step
        last = step >= self.total_steps
        if step % args.logging_steps == 0 or last:
            loss = self.accelerator.reduce(self._loss_sum / self._loss_count, reduction="mean").item()
            self._loss_sum, self._loss_count = torch.zeros_like(self._loss_sum), 0
            self._record(
                {"loss": loss, "learning_rate": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm.item()}
            )
            progress.set_postfix(loss=f"{loss:.4f}")
        if self.eval_split and (_due(args.eval_strategy, args.eval_steps, step, epoch_done) or last):
            self._validate()
        if not last and _due(args.save_strategy, args.save_steps, step, epoch_done):
            if self.stream is not None:  # every process's position in its own stream
                self.state.data_state = gather_object([self.stream.state_dict()])
            self.last_checkpoint = save_checkpoint(
                self.accelerator,
                self.output_dir,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                state=self.state,
                total_limit=args.save_total_limit,
                ema=None if self.ema is None else self.ema.state_dict(),
            )

    def _stop_message(self, what: str) -> str:
        where = f"{what} at step {self.state.global_step + 1} (epoch {self.state.epoch}); stopped without applying it."
        advice = "lower --learning_rate" + (" or use --bf16 instead of --fp16" if self.args.fp16 else "")
        if self.last_checkpoint is None:
            return f"{where} No checkpoint yet: {advice}."
        return (
            f"{where} The last good checkpoint is {self.last_checkpoint}: {advice} and continue with "
            "--resume_from_checkpoint latest."
        )

    # ------------------------------------------------------------------------------------------------ evaluation

    def _record(self, metrics: dict[str, Any]) -> None:
        """Append one entry to the log (train_log.jsonl, trackers, and the state that checkpoints carry)."""
        step = self.state.global_step
        epoch = round(step / self.steps_per_epoch, 4) if self.steps_per_epoch else None  # unknown stream length
        entry = {"step": step, "epoch": epoch, **metrics}
        self.state.log_history.append(entry)
        self.accelerator.log(metrics, step=step)
        if self.accelerator.is_main_process:
            append_log(self.output_dir / LOG_FILE, entry)

    def _start_logging(self) -> None:
        if self.accelerator.is_main_process:  # the log restarts at the checkpoint: the steps after it are replayed
            write_log(self.output_dir / LOG_FILE, self.state.log_history)
        if self.args.report_to != "none":
            options = (vars(a).items() for a in (self.model_args, self.data_args, self.args))
            config = {k: v for items in options for k, v in items if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers("peft_vision_lora", config=config)
        self.accelerator.print(self.recipe())
        logger.info(
            "Training %s (%s) on %s images of %d classes: %d steps of %d images on %d process(es).",
            self.base,
            self.model_args.method,
            len(self.data["train"]) if self.stream is None else self.stream_source.num_samples or "a stream of",
            len(self.labels),
            self.total_steps,
            self.global_batch_size,
            self.accelerator.num_processes,
            main_process_only=True,
        )

    @property
    def training_seconds(self) -> float:
        """Seconds of this run's training so far, evaluations excluded (LP-FT head fitting and feature caching
        included): what the ``train_s`` of each evaluation in the log and in ``metrics.json`` measures."""
        if self.started is None:
            return 0.0
        return self.features_runtime + time.perf_counter() - self.started - self.eval_s

    def recipe(self) -> str:
        """The choices this run trains with, in one line (printed at start, where defaults were resolved)."""
        args, model_args, data_args = self.args, self.model_args, self.data_args
        epochs = self.total_steps / self.steps_per_epoch if self.steps_per_epoch else math.nan
        floor = " (the --min_steps floor)" if args.max_steps <= 0 and self.total_steps == args.min_steps else ""
        parts = [
            model_args.method
            + (f" {model_args.preset} r={model_args.r}" if model_args.method == "lora" else "")
            + (f" on the last {model_args.lora_layers} layers" if model_args.lora_layers else ""),
            f"lr {args.learning_rate or DEFAULT_LEARNING_RATES[model_args.method]:g}",
            f"batch {self.global_batch_size}",
            f"{self.total_steps} steps = {epochs:.1f} epochs{floor}"
            if not math.isnan(epochs)
            else f"{self.total_steps} steps of a stream of unknown length",
            f"{self.target_size} px"
            + (
                f" after {'/'.join(map(str, data_args.resolution_schedule[:-1]))}"
                if data_args.resolution_schedule
                else ""
            ),
            f"crop scale {data_args.min_crop_scale:g}-1",
            self.accelerator.mixed_precision if self.accelerator.mixed_precision != "no" else "fp32",
        ]
        if self.token_dropout is not None:
            patches = (self.target_size // self.accelerator.unwrap_model(self.model).config.patch_size) ** 2
            kept = self.token_dropout.kept_tokens(patches)
            if kept < patches:
                parts.append(f"token keep {args.token_keep:g} ({kept} of {patches} patches)")
            else:
                parts.append(f"every token ({patches} patches, within --token_keep_min {args.token_keep_min})")
        if args.head_init == "linear_probe" and model_args.method != "linear":
            parts.append("head from a linear probe")
        if args.ema_decay:
            parts.append(f"EMA {args.ema_decay:g}")
        if args.tta_flip:
            parts.append("flip TTA")
        return "Recipe: " + ", ".join(parts)

    def _evaluate(self, split: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return self._evaluate_weights(split)
        finally:
            self.last_eval_s = time.perf_counter() - started
            self.eval_s += self.last_eval_s

    def _evaluate_weights(self, split: str) -> dict[str, Any]:
        with self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext():
            return evaluate_model(
                self.step_model,
                self.eval_loaders[split],
                self.accelerator,
                self.labels,
                self.forward_kwargs,
                tta_flip=self.args.tta_flip,
            )

    def _validate(self) -> None:
        """Evaluate on the eval split, log it, and keep the weights if they are the best so far (validation only)."""
        state, metrics = self.state, self._evaluate(self.eval_split)
        self.eval_metrics, self.eval_step = metrics, state.global_step
        train_s = round(self.training_seconds, 3)
        self._record({f"eval_{k}": metrics[k] for k in HEADLINE_METRICS if k in metrics} | {"train_s": train_s})
        score = (metrics["top1_accuracy"], -metrics["loss"])  # top-1 first, the loss breaks ties
        if self.eval_split == "validation" and (
            state.best_metric is None or score > (state.best_metric, -state.best_loss)
        ):
            state.best_metric, state.best_loss = metrics["top1_accuracy"], metrics["loss"]
            state.best_step = state.global_step
            if self.accelerator.is_main_process:
                with self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext():
                    save_best(
                        self.output_dir,
                        self.accelerator.unwrap_model(self.model),
                        step=state.global_step,
                        metric=state.best_metric,
                    )

    def _final_results(self, runtime: float) -> dict[str, Any]:
        """Metrics of the final model: the best validated weights if there is a validation split, else the last."""
        state, accelerator = self.state, self.accelerator
        if self.eval_split and self.eval_step != state.global_step:
            self._validate()  # a resumed run that had nothing left to train
        accelerator.wait_for_everyone()  # best_model.safetensors is written by the main process
        if state.best_step is not None and state.best_step != state.global_step:
            load_trainable_state_dict(accelerator.unwrap_model(self.model), best_model_path(self.output_dir))
            self.eval_metrics = self._evaluate(self.eval_split)
        results = {
            "method": self.model_args.method,
            "model": self.base,
            "dataset": self.source_name,
            "labels": self.labels,
            "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "global_train_batch_size": self.global_batch_size,
            "total_steps": self.total_steps,
            "best_step": state.best_step if state.best_step is not None else state.global_step,
            "train": {
                "loss": next((e["loss"] for e in reversed(state.log_history) if "loss" in e), None),
                "runtime_s": round(runtime, 2),
                "train_s": round(self.train_s, 3),
                # Share of the training time spent waiting for the next batch (decoding, augmentation).
                "data_wait_fraction": round(self.data_wait_s / runtime, 4) if runtime > 0 else 0.0,
            },
        }
        if self.stream is not None:
            skipped = gather_object([sum(self.stream.skipped.values())])
            results["train"]["stream"] = {
                "source": self.stream_source.description,
                "units": len(self.stream_source.units),
                "skipped_bad_samples": sum(skipped),  # bad samples and shards each reader met (resumes: since then)
            }
        if self.cached:  # the one backbone pass per split, before training started
            results["train"]["feature_cache_s"] = round(self.features_runtime, 2)
        # "eval" is always the validation split; without one, the split watched during training was the test split.
        if self.eval_split == "validation":
            results["eval"] = self.eval_metrics
        if "test" in self.data:
            results["test"] = self.eval_metrics if self.eval_split == "test" else self._evaluate("test")
        return results

    def _write_outputs(self, results: dict[str, Any]) -> None:
        """The run folder (main process only), then the Hub."""
        write_run_folder(
            self.output_dir,
            self.accelerator.unwrap_model(self.model),
            self.processor,
            results,
            self.state.log_history,
            command=self.command,
            dataset=self.dataset_id,
        )
        if self.args.push_to_hub:
            message = f"Train {self.model_args.method} on {self.source_name} with peft_vision_lora"
            url = push_to_hub(
                self.output_dir, self.args.hub_model_id, private=self.args.hub_private, commit_message=message
            )
            logger.info("Pushed %s to %s", self.output_dir, url, main_process_only=True)


def _due(strategy: str, every: int | None, step: int, epoch_done: bool) -> bool:
    return (strategy == "steps" and step % every == 0) or (strategy == "epoch" and epoch_done)
