"""The one training loop, behind ``peft-vision-lora train``, ``examples/train.py`` and :func:`peft_vision_lora.train`.

Accelerate runs it on one CPU, one GPU or many processes. Each optimizer step consumes one global batch, split
across processes, so results do not depend on how many processes share the work; checkpoints restore the exact
position in the data, the optimizer, the schedule and all RNG states. The optional parts of a run (token dropout,
LP-FT, EMA, progressive resolution) are :class:`~peft_vision_lora.training.parts.LoopPart` objects that the loop
calls at fixed places; it knows none of them by name.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm
from transformers.image_processing_utils import BaseImageProcessor

from ..data import ImageTransforms
from ..evaluation.metrics import model_inputs
from ..hub import push_to_hub
from ..io import write_json
from .arguments import (
    DEFAULT_LEARNING_RATES,
    DataArguments,
    ModelArguments,
    TrainingArguments,
    args_from_options,
    to_command,
)
from .budget import BudgetPlan, budget_parts, budget_plan
from .checkpointing import TrainerState, load_checkpoint, resolve_checkpoint, save_checkpoint, stop_message
from .choose_parts import choose_parts
from .clock import PhaseClock
from .data import check_same_classes, choose_eval_splits, resolve_eval_strategy
from .inputs import build_mixup, eval_loaders, load_run_data, step_inputs, stream_summary, train_batches
from .launch import check_launch
from .model import base_checkpoint, build_run_model
from .optim import build_optimizer, build_scheduler, plan_steps, warmup_steps
from .outputs import METRICS_FILE, prepare_output_dir, write_run_folder
from .parts import LoopParts
from .precision import build_accelerator, end_processes
from .recipe import recipe_line
from .resolution import check_schedule
from .results import run_results
from .run_log import RunLog
from .validation import EvalCadence, Validation

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
    started_at: float | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Fine-tune, evaluate and save a classifier; returns the contents of ``metrics.json``.

    Pass the three argument dataclasses (as :func:`parse_args` returns them), or the same options by name::

        train(dataset="flowers/", output_dir="runs/flowers-lora", num_train_epochs=3, image_size=112)

    ``dataset`` may also be a ``Dataset``/``DatasetDict`` with image and label columns, used instead of
    ``data_args.dataset``. ``command`` goes into the model card; by default the equivalent ``peft-vision-lora train``
    command. ``started_at`` (a ``time.time()``) is where the run's start-up began; by default, now.
    """
    given = [a for a in (model_args, data_args, training_args) if a is not None]
    if not given:
        if isinstance(dataset, (str, os.PathLike)):
            options, dataset = {**options, "dataset": os.fspath(dataset)}, None
        model_args, data_args, training_args = args_from_options(options)
    elif len(given) != 3 or options:
        raise TypeError("Pass either all three argument dataclasses or options by name, not a mix of both.")
    trainer = Trainer(model_args, data_args, training_args, dataset=dataset, command=command, started_at=started_at)
    return trainer.train()


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
        started_at: float | None = None,
    ) -> None:
        self.clock = PhaseClock(started_at)
        self.model_args, self.data_args, self.args = model_args, data_args, training_args
        self.output_dir = Path(training_args.output_dir)
        self.command = command or to_command(model_args, data_args, training_args)
        self.accelerator = accelerator = build_accelerator(training_args, self.output_dir)
        check_launch(accelerator.num_processes)
        set_seed(training_args.seed)
        self.data = load_run_data(data_args, training_args, dataset)
        self.base, self.model, self.processor, self.image_size = self._setup_model()
        # Everything that can be refused is checked before the output folder is touched.
        self.resume, resumed = self._setup_resume()
        prepare_output_dir(
            accelerator, self.output_dir, resuming=self.resume is not None, overwrite=training_args.overwrite_output_dir
        )
        train_tf = ImageTransforms.from_processor(
            self.processor, train=True, **data_args.transform_options(training_args.seed)
        )
        eval_tf = ImageTransforms.from_processor(self.processor, train=False)
        mixup = build_mixup(len(self.data.labels), data_args, training_args)
        self.smoothing = 0.0 if mixup else training_args.label_smoothing  # Mixup's soft targets carry the smoothing
        self.eval_strategy = resolve_eval_strategy(training_args.eval_strategy, self.data.splits)
        eval_splits = choose_eval_splits(self.data.splits, self.eval_strategy)  # (watched during training, test)
        inputs = step_inputs(
            self.model,
            self.data,
            train_batches(self.data, train_tf, accelerator, data_args, training_args, mixup),
            eval_loaders(self.data, [s for s in eval_splits if s], eval_tf, accelerator, training_args),
            eval_tf, accelerator, self.clock, model_args, data_args, training_args,
        )  # fmt: skip
        self.train_data, self.cache_s = inputs.train, inputs.cache_s
        self.plan = plan_steps(
            self.train_data.batches_per_epoch,
            gradient_accumulation_steps=training_args.gradient_accumulation_steps,
            num_train_epochs=training_args.num_train_epochs,
            max_steps=training_args.max_steps,
            min_steps=training_args.min_steps,
        )
        saved_budget = resumed.budget if resumed else None
        self.plan = budget_plan(self.plan, training_args.time_budget, saved_budget)
        self.cadence = EvalCadence(  # a budget may space the epoch evaluations: a resumed run keeps its spacing
            self.eval_strategy if eval_splits[0] else "no", self.plan.steps_per_epoch, training_args.eval_steps,
            every_epochs=(saved_budget or {}).get("eval_every_epochs", 1),
        )  # fmt: skip
        self.optimizer, self.scheduler = self._setup_optimization()
        # step_model is what forward and backward run: the model itself, or only its head on cached features.
        # self.model stays the whole classifier, which checkpoints, best weights and the run folder save.
        self.step_model, self.optimizer, *loaders = accelerator.prepare(
            inputs.step_model, self.optimizer, *inputs.eval_loaders.values()
        )
        self.train_data.prepare(accelerator)
        loaders = dict(zip(inputs.eval_loaders, loaders))
        parts = choose_parts(
            self.model, model_args, data_args, training_args, accelerator=accelerator, data=self.data,
            train_data=self.train_data, eval_transforms=eval_tf, image_size=self.image_size,
            num_epochs=self.plan.num_epochs, clock=self.clock, cached=inputs.cache_s is not None,
        )  # fmt: skip
        # The budget comes first: before the LP-FT pass, it may choose the recipe of a run with many epochs to spare.
        self.parts = LoopParts(budget_parts(
            training_args, data_args, plan=self.plan, saved=saved_budget, parts=parts, cadence=self.cadence,
            clock=self.clock, accelerator=accelerator, step_model=self.step_model, loaders=loaders,
            eval_split=eval_splits[0], replan=self._replan, image_size=self.image_size,
        ) + parts)  # fmt: skip
        self.state = self._setup_state(resumed)
        self.log = RunLog(accelerator, self.output_dir, self.state, self.plan.steps_per_epoch)
        self.validation = Validation(
            self.model, self.step_model, loaders, accelerator, self.data.labels, parts=self.parts, clock=self.clock,
            log=self.log, state=self.state, output_dir=self.output_dir, splits=eval_splits,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------------ setup

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    @property
    def global_batch_size(self) -> int:
        """Images per optimizer step, over all processes."""
        args = self.args
        return args.per_device_train_batch_size * self.accelerator.num_processes * args.gradient_accumulation_steps

    def _setup_model(self) -> tuple[str, torch.nn.Module, BaseImageProcessor, int]:
        """The base checkpoint's name, the trainable classifier, its one image processor and the one image size."""
        base = base_checkpoint(self.model_args, self.accelerator)
        model, processor, size = build_run_model(
            self.model_args, base, self.data.labels, gradient_checkpointing=self.args.gradient_checkpointing
        )
        check_schedule(self.data_args.resolution_schedule, size, explicit=bool(self.model_args.image_size))
        return base, model, processor, size

    def _setup_resume(self) -> tuple[Path | None, TrainerState | None]:
        """The checkpoint to continue from (``--resume_from_checkpoint``) and its saved loop state, checked against
        this run's classes."""
        if not self.args.resume_from_checkpoint:
            return None, None
        resume = resolve_checkpoint(self.output_dir, self.args.resume_from_checkpoint)
        saved = TrainerState.load(resume)
        check_same_classes(self.data.labels, saved.labels, resume)
        return resume, saved

    def _setup_optimization(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        args = self.args
        optimizer = build_optimizer(
            self.model,
            learning_rate=args.learning_rate or DEFAULT_LEARNING_RATES[self.model_args.method],
            weight_decay=args.weight_decay,
            head_lr=args.head_lr,
        )
        return optimizer, self._schedule(optimizer)

    def _schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        args, total = self.args, self.plan.total_steps
        warmup = warmup_steps(total, warmup_ratio=args.warmup_ratio, warmup_steps=args.warmup_steps)
        return build_scheduler(optimizer, args.lr_scheduler_type, total_steps=total, num_warmup_steps=warmup)

    def _replan(self, budget: BudgetPlan) -> None:
        """``--time_budget``'s length and evaluation spacing, and the schedule rebuilt for it at the current step."""
        self.plan, self.state.budget = self.plan.with_total(budget.total_steps, "budget"), budget.to_dict()
        self.cadence = replace(self.cadence, every_epochs=budget.eval_every_epochs)
        self.log.record({"planned_steps": budget.total_steps, "planned_step_s": round(budget.step_s, 4)})
        self.scheduler = self._schedule(getattr(self.optimizer, "optimizer", self.optimizer))
        for _ in range(self.state.global_step):
            self.scheduler.step()

    def _setup_state(self, resumed: TrainerState | None) -> TrainerState:
        """A fresh loop position, or the checkpoint's (``resumed``) with everything it restores (weights, optimizer,
        RNG, parts)."""
        if self.resume is None or resumed is None:
            return TrainerState(labels=self.data.labels, batches_per_epoch=self.plan.batches_per_epoch)
        state = load_checkpoint(
            self.accelerator,
            self.resume,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            parts=self.parts.stateful(),
            state=resumed,
        )
        if state.batches_per_epoch != self.plan.batches_per_epoch:
            raise ValueError(
                f"{self.resume} was written with {state.batches_per_epoch} batches per epoch, this run has "
                f"{self.plan.batches_per_epoch}: resume with the same data and global batch size."
            )
        self.train_data.load_state(state.data_state, self.accelerator, self.resume)
        return state

    # ------------------------------------------------------------------------------------------------------- run

    def train(self) -> dict[str, Any]:
        options = (vars(a).items() for a in (self.model_args, self.data_args, self.args))
        self.log.start(None if self.args.report_to == "none" else {k: v for items in options for k, v in items})
        self.accelerator.print(self.recipe())
        logger.info(
            "Training %s (%s) on %s images of %d classes: %d steps of %d images on %d process(es).",
            self.base, self.model_args.method, self.data.num_train or "a stream of", len(self.data.labels),
            self.total_steps, self.global_batch_size, self.accelerator.num_processes, main_process_only=True,
        )  # fmt: skip
        with self.clock.phase("train"):
            self.parts.begin(resumed=self.resume is not None)
            self._fit()
            self.parts.finish()  # e.g. the EMA's average goes into the model: evaluated and saved as such
        train_s = self.training_seconds
        runtime = sum(self.clock.total(p) for p in ("train", "linear_probe", "eval"))
        eval_metrics, test_metrics = self.validation.final(train_s)
        accelerator = self.accelerator
        results = run_results(
            method=self.model_args.method, model=self.base, dataset=self.data.source_name, labels=self.data.labels,
            num_processes=accelerator.num_processes, mixed_precision=accelerator.mixed_precision,
            global_batch_size=self.global_batch_size, total_steps=self.total_steps, state=self.state,
            runtime_s=runtime, train_s=train_s, data_wait_s=self.clock.tally["data_wait"], cache_s=self.cache_s,
            stream=stream_summary(self.data, self.train_data),
            eval_metrics=eval_metrics, test_metrics=test_metrics,
        ) | {"steps_done": self.state.global_step, "time_budget": self.state.budget}  # fmt: skip
        with self.clock.phase("outputs"):
            if accelerator.is_main_process:
                self._write_outputs(results)
            accelerator.wait_for_everyone()
            end_processes(accelerator)
        results["phases"] = phases = self.clock.summary()
        if accelerator.is_main_process:  # now that writing it is measured too
            write_json(self.output_dir / METRICS_FILE, results)
        spent = ", ".join(f"{name[:-2]} {s:.1f}" for name, s in phases.items() if name != "total_s")
        accelerator.print(f"Done in {phases['total_s']:.1f} s: {spent}")
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
        self.step_model.train()
        while state.global_step < self.total_steps and not self._stopping():
            self.parts.begin_epoch(state.epoch)
            # One epoch of a map-style dataset (from the checkpoint's batch when resuming); a stream never ends.
            for batch in self._timed(self.train_data.epoch(state.epoch, state.batches_in_epoch, accelerator)):
                grad_norm = self._training_step(batch)
                state.batches_in_epoch += 1
                if grad_norm is None:  # accumulating: no optimizer step yet
                    continue
                self.scheduler.step()
                state.global_step += 1
                self.parts.after_step(state.global_step)
                progress.update(1)
                epoch_done = state.batches_in_epoch == self.plan.batches_per_epoch
                if epoch_done:
                    state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                self._after_step(grad_norm, epoch_done, progress)
                if state.global_step >= self.total_steps or self._stopping():
                    break
        progress.close()

    def _timed(self, batches: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """``batches``, counting the time spent waiting for each (decoding, augmentation)."""
        while True:
            waited = time.perf_counter()
            batch = next(batches, None)
            self.clock.tally["data_wait"] += time.perf_counter() - waited
            if batch is None:
                return
            yield batch

    def _stopping(self) -> bool:
        return self.validation.should_stop(self.args.early_stopping_patience)

    def _stopped(self, what: str) -> str:
        return stop_message(what, self.state, self.output_dir, self.resume, fp16=self.args.fp16)

    def _training_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Forward and backward one batch; returns the gradient norm when it completed an optimizer step."""
        args, accelerator, state, grad_norm = self.args, self.accelerator, self.state, None
        self.parts.before_forward(batch, state.epoch * self.plan.batches_per_epoch + state.batches_in_epoch)
        with accelerator.accumulate(self.step_model):
            logits = self.step_model(**model_inputs(batch), **self.parts.forward_kwargs()).logits
            loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=self.smoothing)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(self._stopped(f"Training loss is {loss.item()}"))
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(self.step_model.parameters(), args.max_grad_norm or math.inf)
                # Under fp16 the grad scaler skips steps with inf gradients by design.
                if not args.fp16 and not torch.isfinite(grad_norm):
                    raise NonFiniteLossError(self._stopped(f"Gradient norm is {grad_norm.item()}"))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.log.add_loss(loss)
        return grad_norm

    def _after_step(self, grad_norm: torch.Tensor, epoch_done: bool, progress: tqdm) -> None:
        """Log, evaluate and checkpoint when due."""
        args, step = self.args, self.state.global_step
        last, progress.total = step >= self.total_steps, self.total_steps  # --time_budget may have set it now
        if step % args.logging_steps == 0 or last:
            loss = self.log.pop_loss()
            self.log.record(
                {"loss": loss, "learning_rate": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm.item()}
            )
            progress.set_postfix(loss=f"{loss:.4f}")
        due = self.cadence.due(step, self.total_steps, epoch_done=epoch_done, epochs_done=self.state.epoch)
        if self.validation.eval_split and (due or last):
            self.validation.validate(self.training_seconds)
        if not last and _due(args.save_strategy, args.save_steps, step, epoch_done):
            self.state.data_state = self.train_data.gather_state()  # a stream's position in every process
            save_checkpoint(
                self.accelerator, self.output_dir, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                state=self.state, total_limit=args.save_total_limit, parts=self.parts.checkpoint_tensors(),
            )  # fmt: skip

    # ------------------------------------------------------------------------------------------- logging, results

    @property
    def training_seconds(self) -> float:
        """Seconds of this run's training so far, evaluations excluded (LP-FT head fitting and feature caching
        included): what the ``train_s`` of each evaluation in the log and in ``metrics.json`` measures."""
        return (self.cache_s or 0.0) + self.clock.total("linear_probe") + self.clock.total("train")

    def recipe(self) -> str:
        """The choices this run trains with, in one line (printed at start, where defaults were resolved)."""
        return recipe_line(
            self.model_args, self.data_args, self.args, plan=self.plan, global_batch_size=self.global_batch_size,
            image_size=self.image_size, mixed_precision=self.accelerator.mixed_precision, parts=self.parts.recipe(),
        )  # fmt: skip

    def _write_outputs(self, results: dict[str, Any]) -> None:
        """The run folder (main process only), then the Hub."""
        write_run_folder(
            self.output_dir, self.model, self.processor, results, self.state.log_history, command=self.command,
            dataset=self.data.dataset_id,
        )  # fmt: skip
        if self.args.push_to_hub:
            args = self.args
            message = f"Train {self.model_args.method} on {self.data.source_name} with peft_vision_lora"
            url = push_to_hub(self.output_dir, args.hub_model_id, private=args.hub_private, commit_message=message)
            logger.info("Pushed %s to %s", self.output_dir, url, main_process_only=True)


def _due(strategy: str, every: int | None, step: int, epoch_done: bool) -> bool:
    return (strategy == "steps" and step % every == 0) or (strategy == "epoch" and epoch_done)
