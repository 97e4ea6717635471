"""Which optional parts of the loop a run's options ask for, built in the order the recipe line names them."""

from __future__ import annotations

from accelerate import Accelerator
from torch import nn

from ..data import ImageTransforms
from .arguments import DataArguments, ModelArguments, TrainingArguments
from .clock import PhaseClock
from .data import RunData, TrainData
from .ema import EMA
from .head_init import LinearProbeHead
from .parts import LoopPart
from .resolution import ResolutionSchedule
from .stream_data import StreamTrainData
from .token_dropout import TokenDropoutPart


def choose_parts(
    model: nn.Module,
    model_args: ModelArguments,
    data_args: DataArguments,
    args: TrainingArguments,
    *,
    accelerator: Accelerator,
    data: RunData,
    train_data: TrainData | StreamTrainData,
    eval_transforms: ImageTransforms,
    image_size: int,
    num_epochs: int,
    clock: PhaseClock,
    cached: bool,
) -> list[LoopPart]:
    """Token dropout and LP-FT (lora/full), EMA, and progressive resolution (images, not cached features)."""
    adapts = model_args.method != "linear"
    parts: list[LoopPart] = []
    if args.token_keep < 1 and adapts:
        parts.append(
            TokenDropoutPart(
                model,
                args.token_keep,
                min_tokens=args.token_keep_min,
                seed=args.seed,
                image_size=image_size,
                rank=accelerator.process_index,
                world_size=accelerator.num_processes,
            )  # fmt: skip
        )
    if args.head_init == "linear_probe" and adapts:
        parts.append(LinearProbeHead(model, data, eval_transforms, accelerator, clock, args, data_args.shuffle_buffer))
    if args.ema_decay > 0:
        parts.append(EMA(model, args.ema_decay))
    if data_args.resolution_schedule and not cached:
        parts.append(ResolutionSchedule(data_args.resolution_schedule, model, train_data, num_epochs))
    return parts
