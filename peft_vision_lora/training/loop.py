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
from accelerate.utils import ProjectConfiguration, set_seed
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import ImageTransforms, MixupCutmix, load_image_dataset
from ..evaluation.metrics import evaluate_model, model_inputs
from ..hub import push_to_hub
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
from .data import (
    RunData,
    TrainData,
    check_same_classes,
    choose_eval_splits,
    class_names,
    eval_dataloader,
    train_dataloader,
)
from .ema import EMA
from .features import FeatureCache, backbone_features, cache_features, fit_linear_head, trainable_linear
from .launch import check_launch
from .model import build_training_model, enable_gradient_checkpointing, forward_kwargs, head_module
from .optim import build_optimizer, build_scheduler, plan_steps, warmup_steps
from .outputs import HEADLINE_METRICS, LOG_FILE, append_log, prepare_output_dir, write_log, write_run_folder
from .precision import launch_device, resolve_mixed_precision
from .stream_data import (
    StreamTrainData,
    check_stream_options,
    open_stream_source,
    stream_prefix_features,
    stream_train_data,
)

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
    """One run: everything is built (and checked) in the constructor, :meth:`train` does the rest.

    Each ``_setup_*`` method returns what it builds; the constructor shows the order in which they run.
    """

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
        self.accelerator = accelerator = self._setup_accelerator()
        check_launch(accelerator.num_processes)
        set_seed(training_args.seed)
        self.data = self._setup_data(dataset)
        self.base, self.model, self.processor = self._setup_model()
        self.target_size = native_image_size(self.model)
        # Everything that can be refused is checked before the output folder is touched.
        self.resume = self._setup_resume()
        prepare_output_dir(
            accelerator, self.output_dir, resuming=self.resume is not None, overwrite=training_args.overwrite_output_dir
        )
        train_tf = ImageTransforms.from_processor(self.processor, train=True, **data_args.transform_options(self.seed))
        self.eval_tf = ImageTransforms.from_processor(self.processor, train=False)
        self.forward_kwargs = forward_kwargs(self.model, train_tf.size[0])
        self.mixup = self._setup_mixup()
        self.train_data = self._setup_train_data(train_tf)
        self.eval_split, self.test_split = choose_eval_splits(self.data.splits, training_args.eval_strategy)
        self.eval_loaders = self._setup_eval_loaders()
        # step_model is what forward and backward run: the model itself, or only its head on cached features.
        # self.model stays the whole classifier, which checkpoints, best weights and the run folder save.
        self.step_model, self.features_runtime = self.model, 0.0
        self.cached = self._use_feature_cache()
        if self.cached:
            cache = self._setup_feature_cache()
            self.train_data, self.eval_loaders, self.step_model = cache.train, cache.eval_loaders, cache.step_model
            self.forward_kwargs, self.features_runtime = {}, cache.seconds
        self.train_forward_kwargs = self.forward_kwargs  # progressive resolution changes it per stage
        self.plan = plan_steps(
            self.train_data.batches_per_epoch,
            gradient_accumulation_steps=training_args.gradient_accumulation_steps,
            num_train_epochs=training_args.num_train_epochs,
            max_steps=training_args.max_steps,
            min_steps=training_args.min_steps,
        )
        self.optimizer, self.scheduler = self._setup_optimization()
        self.step_model, self.optimizer, *loaders = accelerator.prepare(
            self.step_model, self.optimizer, *self.eval_loaders.values()
        )
        self.eval_loaders = dict(zip(self.eval_loaders, loaders))
        self.train_data.prepare(accelerator)
        if not self.cached:
            self.model = self.step_model
        self.state = TrainerState(labels=self.data.labels, batches_per_epoch=self.plan.batches_per_epoch)
        self.ema = self._setup_ema()
        self.token_dropout = self._setup_token_dropout()
        self.data_wait_s = 0.0  # time the training loop waited for its next batch
        self.eval_s = self.last_eval_s = 0.0  # time spent evaluating, which training_seconds leaves out
        self.started: float | None = None
        self.last_checkpoint = self.resume
        self.eval_metrics: dict[str, Any] | None = None  # of the latest evaluation, at step eval_step
        self.eval_step = -1

    # ------------------------------------------------------------------------------------------------------ setup

    @property
    def seed(self) -> int:
        return self.args.seed

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    @property
    def global_batch_size(self) -> int:
        """Images per optimizer step, over all processes."""
        args = self.args
        return args.per_device_train_batch_size * self.accelerator.num_processes * args.gradient_accumulation_steps

    def _setup_accelerator(self) -> Accelerator:
        args = self.args
        return Accelerator(
            mixed_precision=resolve_mixed_precision(args, launch_device()),
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            # The dataloader yields global batches and each process takes its slice: every step sees the same
            # samples for any number of processes, and so the result is the same (up to float reduction order).
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            log_with=None if args.report_to == "none" else args.report_to,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "runs")
            ),
        )

    def _setup_data(self, dataset: Dataset | DatasetDict | None) -> RunData:
        data_args = self.data_args
        source = dataset if dataset is not None else data_args.dataset
        if source is None:
            raise ValueError("No training data: pass --dataset (a folder, a file or a Hub dataset id).")
        # Named in the model card and metrics; an in-memory dataset has no name to record.
        dataset_id = data_args.dataset if dataset is None else None
        source_name = dataset_id or f"in-memory {type(dataset).__name__}"
        stream = open_stream_source(data_args) if dataset is None else None
        if stream is not None:
            check_stream_options(stream, data_args, self.args)
            card_id = dataset_id if data_args.streaming else None  # a shard pattern is no dataset to name in the card
            return RunData(stream.eval_data, stream.names, source_name, card_id, stream)
        splits = load_image_dataset(
            source,
            format=data_args.dataset_format,
            val_fraction=data_args.val_fraction,
            shots=data_args.shots,
            seed=self.seed,
            on_bad_image=data_args.on_bad_image,
        )
        return RunData(splits, class_names(splits, source_name), source_name, dataset_id)

    def _setup_model(self) -> tuple[str, torch.nn.Module, Any]:
        """The base checkpoint's name, the trainable classifier and its image processor."""
        with self.accelerator.main_process_first():  # the default backbone is converted once, by the first process
            if self.model_args.model:
                base = self.model_args.model
            else:
                from ..offline.backbone import default_model_path

                base = default_model_path()
        model = build_training_model(self.model_args, base, self.data.labels, image_size=self.data_args.image_size)
        schedule, target = self.data_args.resolution_schedule, native_image_size(model)
        if schedule and schedule[-1] != target:  # checked here: only the model knows its own size
            source = "--image_size" if self.data_args.image_size else "the checkpoint's; --image_size changes it"
            raise ValueError(f"--resolution_schedule must end at the target size {target} ({source}), got {schedule}.")
        if self.args.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        processor = load_image_processor(
            base, image_size=self.data_args.image_size, normalization=self.model_args.normalization
        )
        return base, model, processor

    def _setup_resume(self) -> Path | None:
        """The checkpoint to continue from (``--resume_from_checkpoint``), checked against this run's classes."""
        if not self.args.resume_from_checkpoint:
            return None
        resume = resolve_checkpoint(self.output_dir, self.args.resume_from_checkpoint)
        check_same_classes(self.data.labels, TrainerState.load(resume).labels, resume)
        return resume

    def _setup_mixup(self) -> MixupCutmix | None:
        data_args = self.data_args
        if data_args.mixup_alpha <= 0 and data_args.cutmix_alpha <= 0:
            return None
        return MixupCutmix(
            len(self.data.labels),
            data_args.mixup_alpha,
            data_args.cutmix_alpha,
            label_smoothing=self.args.label_smoothing,
            seed=self.seed,
        )

    def _setup_train_data(self, transforms: ImageTransforms) -> TrainData | StreamTrainData:
        args = self.args
        if self.data.stream is not None:
            return stream_train_data(
                self.data.stream,
                transforms,
                self.accelerator,
                batch_size=args.per_device_train_batch_size,
                seed=self.seed,
                shuffle_buffer=self.data_args.shuffle_buffer,
                num_workers=args.dataloader_num_workers,
                on_bad=self.data_args.on_bad_image,
                gradient_accumulation_steps=args.gradient_accumulation_steps,
                mixup=self.mixup,
            )
        return train_dataloader(
            self.data.splits,
            transforms,
            global_batch_size=args.per_device_train_batch_size * self.accelerator.num_processes,
            seed=self.seed,
            num_workers=args.dataloader_num_workers,
            mixup=self.mixup,
        )

    def _setup_eval_loaders(self) -> dict[str, DataLoader]:
        return {
            split: eval_dataloader(
                self.data.splits[split],
                self.eval_tf,
                global_batch_size=self.args.per_device_eval_batch_size * self.accelerator.num_processes,
                num_workers=self.args.dataloader_num_workers,
            )
            for split in (self.eval_split, self.test_split)
            if split
        }

    def _use_feature_cache(self) -> bool:
        """Whether this run is a linear probe on cached features (see ``--cache_features``)."""
        if self.model_args.method != "linear" or not self.args.cache_features:
            return False
        if self.data.stream is not None:
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

    def _setup_feature_cache(self) -> FeatureCache:
        """Loaders of backbone features in place of the image loaders, computed once per split (eval transform)."""
        splits = {"train": self.data.splits["train"], **{s: self.data.splits[s] for s in self.eval_loaders}}
        cache = cache_features(
            self.model,
            splits,
            self.eval_tf,
            self.accelerator,
            train_batch_size=self.train_data.loader.batch_size,
            eval_batch_size=self.args.per_device_eval_batch_size,
            seed=self.seed,
            num_workers=self.args.dataloader_num_workers,
            forward_kwargs=self.forward_kwargs,
        )
        logger.info(
            "Linear probe on cached features: %d-dim features of %s computed in %.1fs.",
            cache.train.loader.dataset.features.shape[-1],
            ", ".join(splits),
            cache.seconds,
            main_process_only=True,
        )
        return cache

    def _setup_optimization(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        args, total = self.args, self.plan.total_steps
        optimizer = build_optimizer(
            self.model,
            learning_rate=args.learning_rate or DEFAULT_LEARNING_RATES[self.model_args.method],
            weight_decay=args.weight_decay,
            head_lr=args.head_lr,
        )
        warmup = warmup_steps(total, warmup_ratio=args.warmup_ratio, warmup_steps=args.warmup_steps)
        return optimizer, build_scheduler(optimizer, args.lr_scheduler_type, total_steps=total, num_warmup_steps=warmup)

    def _setup_ema(self) -> EMA | None:
        if self.args.ema_decay <= 0:
            return None
        return EMA(self.accelerator.unwrap_model(self.model), self.args.ema_decay)

    def _setup_token_dropout(self) -> TokenDropout | None:
        args = self.args
        if args.token_keep >= 1 or self.model_args.method == "linear":
            return None
        model = self.accelerator.unwrap_model(self.model)
        return TokenDropout(model, args.token_keep, seed=self.seed, min_tokens=args.token_keep_min)

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
            if self.state.batches_per_epoch != self.plan.batches_per_epoch:
                raise ValueError(
                    f"{self.resume} was written with {self.state.batches_per_epoch} batches per epoch, this run has "
                    f"{self.plan.batches_per_epoch}: resume with the same data and global batch size."
                )
            self.train_data.load_state(self.state.data_state, self.accelerator, self.resume)
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
        while state.global_step < self.total_steps:
            self._set_resolution(state.epoch)
            # One epoch of a map-style dataset (from the checkpoint's batch when resuming); a stream never ends.
            batches = self.train_data.epoch(state.epoch, state.batches_in_epoch, accelerator)
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
                epoch_done = state.batches_in_epoch == self.plan.batches_per_epoch
                if epoch_done:
                    state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                self._after_step(grad_norm, epoch_done, progress)
                if state.global_step >= self.total_steps:
                    break
        progress.close()

    def _set_resolution(self, epoch: int) -> None:
        """Progressive resolution: the train size of ``epoch``'s stage (equal stages of the run's epochs)."""
        schedule = self.data_args.resolution_schedule
        if not schedule or self.cached:
            return
        size = schedule[min(len(schedule) - 1, epoch * len(schedule) // self.plan.num_epochs)]
        self.train_data.set_size(size)
        self.train_forward_kwargs = forward_kwargs(self.model, size)

    def _linear_probe_init(self) -> None:
        """LP-FT: fit the head on cached features of the training images before any backbone weight moves."""
        started = time.perf_counter()
        head = head_module(self.accelerator.unwrap_model(self.model))
        if self.data.stream is not None:  # a prefix of the stream: the whole of it is not known, nor needed
            features = stream_prefix_features(
                self.data.stream,
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
            features = backbone_features(
                self.model,
                self.data.splits["train"],
                self.eval_tf,
                self.accelerator,
                batch_size=self.args.per_device_eval_batch_size,
                num_workers=self.args.dataloader_num_workers,
                forward_kwargs=self.forward_kwargs,
            )
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
                state.epoch * self.plan.batches_per_epoch + state.batches_in_epoch,
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
            self.state.data_state = self.train_data.gather_state()  # a stream's position in every process
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
        per_epoch = self.plan.steps_per_epoch
        epoch = round(step / per_epoch, 4) if per_epoch else None  # None: a stream of unknown length
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
            self.data.num_train or "a stream of",
            len(self.data.labels),
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
        epochs = self.plan.epochs
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
                self.data.labels,
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
            "dataset": self.data.source_name,
            "labels": self.data.labels,
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
        if self.data.stream is not None:
            stream = self.data.stream
            results["train"]["stream"] = {"source": stream.description, "units": len(stream.units)}
            results["train"]["stream"].update(self.train_data.summary())
        if self.cached:  # the one backbone pass per split, before training started
            results["train"]["feature_cache_s"] = round(self.features_runtime, 2)
        # "eval" is always the validation split; without one, the split watched during training was the test split.
        if self.eval_split == "validation":
            results["eval"] = self.eval_metrics
        if "test" in self.data.splits:
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
            dataset=self.data.dataset_id,
        )
        if self.args.push_to_hub:
            message = f"Train {self.model_args.method} on {self.data.source_name} with peft_vision_lora"
            url = push_to_hub(
                self.output_dir, self.args.hub_model_id, private=self.args.hub_private, commit_message=message
            )
            logger.info("Pushed %s to %s", self.output_dir, url, main_process_only=True)


def _due(strategy: str, every: int | None, step: int, epoch_done: bool) -> bool:
    return (strategy == "steps" and step % every == 0) or (strategy == "epoch" and epoch_done)
