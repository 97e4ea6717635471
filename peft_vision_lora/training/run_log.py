"""The run's log: ``train_log.jsonl``, the experiment trackers and the history that checkpoints carry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .checkpointing import TrainerState
from .outputs import LOG_FILE, append_log, write_log


class RunLog:
    """Log entries at the state's current step, and the mean training loss since the last entry."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, state: TrainerState, steps_per_epoch: int) -> None:
        self.accelerator, self.path, self.state, self.steps_per_epoch = (
            accelerator,
            output_dir / LOG_FILE,
            state,
            steps_per_epoch,
        )
        self.loss_sum, self.loss_count = torch.zeros((), device=accelerator.device), [0]

    def start(self, options: dict[str, Any] | None) -> None:
        """Write the history so far (a resumed run replays the steps after its checkpoint); start the trackers with
        ``options`` unless None."""
        if self.accelerator.is_main_process:
            write_log(self.path, self.state.log_history)
        if options is not None:
            config = {k: v for k, v in options.items() if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers("peft_vision_lora", config=config)

    def add_loss(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach()  # on the device: no sync until it is logged
        self.loss_count[0] += 1

    def pop_loss(self) -> float:
        """The mean loss since the last call, over all processes."""
        mean = self.accelerator.reduce(self.loss_sum / self.loss_count[0], reduction="mean").item()
        self.loss_sum.zero_()
        self.loss_count[0] = 0
        return mean

    def record(self, metrics: dict[str, Any]) -> None:
        """Append one entry (step, epoch and ``metrics``) to the log, the trackers and the state's history."""
        step = self.state.global_step
        epoch = (
            round(step / self.steps_per_epoch, 4) if self.steps_per_epoch else None
        )  # None: a stream of unknown length
        entry = {"step": step, "epoch": epoch, **metrics}
        self.state.log_history.append(entry)
        self.accelerator.log(metrics, step=step)
        if self.accelerator.is_main_process:
            append_log(self.path, entry)
