"""Evaluation in a run: the eval split when due, the best weights so far (validation only), the final metrics.

A validation split evaluates during training and selects the best weights; without one the test split is only
watched, never used to select (that would leak it into the reported result).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from ..evaluation.metrics import evaluate_model
from .arguments import steps_every
from .checkpointing import TrainerState, best_model_path, load_trainable_state_dict, save_best
from .clock import PhaseClock
from .model import merged_adapters
from .outputs import HEADLINE_METRICS
from .parts import LoopPart
from .run_log import RunLog


@dataclass(frozen=True)
class EvalCadence:
    """When the watched split is evaluated during training, besides at the end: ``epoch``, every ``every_epochs``
    epochs (1 unless a time budget spaces them); ``steps``, every ``eval_steps`` (a step count, or a fraction of the
    run's length); ``no``, never. The loop asks :meth:`due`, a time budget's plan counts them with :meth:`count`."""

    strategy: str
    steps_per_epoch: int
    eval_steps: float | None = None
    every_epochs: int = 1

    def interval(self, total_steps: int) -> int | None:
        """Optimizer steps between evaluations in a run of ``total_steps``; None: no evaluation during training."""
        if self.strategy == "epoch":
            return self.steps_per_epoch * self.every_epochs
        return steps_every(self.eval_steps, total_steps) if self.strategy == "steps" else None

    def due(self, step: int, total_steps: int, *, epoch_done: bool, epochs_done: int) -> bool:
        """Whether optimizer step ``step`` is followed by an evaluation (``epochs_done``: epochs completed so far)."""
        if self.strategy == "epoch":  # at the epoch's real end: its last step may hold fewer batches
            return epoch_done and epochs_done % self.every_epochs == 0
        every = self.interval(total_steps)
        return bool(every) and step % every == 0

    def count(self, total_steps: int) -> int:
        """Evaluations a run of ``total_steps`` makes before its last step (the one at the end is counted apart)."""
        every = self.interval(total_steps)
        return (total_steps - 1) // every if every else 0


class Validation:
    """Evaluates ``step_model`` with the parts' weights swapped in; keeps ``model``'s best trainable weights."""

    def __init__(
        self,
        model: nn.Module,
        step_model: nn.Module,
        loaders: dict[str, DataLoader],
        accelerator: Accelerator,
        labels: list[str],
        *,
        parts: LoopPart,
        clock: PhaseClock,
        log: RunLog,
        state: TrainerState,
        output_dir: Path,
        splits: tuple[str | None, str | None],
    ) -> None:
        self.model, self.step_model, self.loaders, self.accelerator, self.labels = (
            model, step_model, loaders, accelerator, labels,
        )  # fmt: skip
        self.parts, self.clock, self.log, self.state, self.output_dir = parts, clock, log, state, output_dir
        self.eval_split, self.test_split = splits
        self.latest: dict[str, Any] = {"step": -1, "metrics": None}  # the latest evaluation of eval_split

    def evaluate(self, split: str) -> dict[str, Any]:
        with self.clock.phase("eval"), self.parts.swapped_in(), merged_adapters(self.step_model):
            return evaluate_model(self.step_model, self.loaders[split], self.accelerator, self.labels)

    def validate(self, train_s: float) -> None:
        """Evaluate on the eval split, log it, and keep the weights if they are the best so far (validation only)."""
        state, metrics = self.state, self.evaluate(self.eval_split)
        self.latest.update(step=state.global_step, metrics=metrics)
        timings = {"train_s": round(train_s, 3), "eval_s": round(self.clock.last["eval"], 3)}
        self.log.record({f"eval_{k}": metrics[k] for k in HEADLINE_METRICS if k in metrics} | timings)
        score = (metrics["top1_accuracy"], -metrics["loss"])  # top-1 first, the loss breaks ties
        state.evaluations_since_best += 1
        if self.eval_split == "validation" and (
            state.best_metric is None or score > (state.best_metric, -state.best_loss)
        ):
            state.best_metric, state.best_loss = metrics["top1_accuracy"], metrics["loss"]
            state.best_step, state.evaluations_since_best = state.global_step, 0
            if self.accelerator.is_main_process:
                with self.parts.swapped_in():
                    save_best(self.output_dir, self.model, step=state.global_step, metric=state.best_metric)

    def should_stop(self, patience: int | None) -> bool:
        """Early stopping: ``patience`` validations in a row without a better score (never on a watched test split)."""
        return bool(patience) and self.eval_split == "validation" and self.state.evaluations_since_best >= patience

    def final(self, train_s: float) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Validation and test metrics of the final model: the best validated weights if there is a validation
        split, else the last. Without a validation split, the split watched during training was the test split."""
        state = self.state
        if self.eval_split and self.latest["step"] != state.global_step:
            self.validate(train_s)  # a resumed run that had nothing left to train
        self.accelerator.wait_for_everyone()  # best_model.safetensors is written by the main process
        latest = self.latest["metrics"]
        if state.best_step is not None and state.best_step != state.global_step:
            load_trainable_state_dict(self.model, best_model_path(self.output_dir))
            latest = self.evaluate(self.eval_split)
        test = latest if self.eval_split == "test" else self.evaluate(self.test_split) if self.test_split else None
        return (latest if self.eval_split == "validation" else None), test
