"""The one line that says what a run trains with, defaults resolved (printed first by every run)."""

from __future__ import annotations

import math

from .arguments import DEFAULT_LEARNING_RATES, DataArguments, ModelArguments, TrainingArguments
from .optim import StepPlan


def recipe_line(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: TrainingArguments,
    *,
    plan: StepPlan,
    global_batch_size: int,
    image_size: int,
    mixed_precision: str,
    parts: str | None = None,
) -> str:
    """``Recipe: lora qkv r=8, lr 0.002, batch 32, 100 steps = 4.5 epochs, 112 px, ...``; ``parts`` is what the
    run's optional parts add (token dropout, LP-FT, EMA)."""
    total = plan.total_steps
    why = {
        "floor": " (the --min_steps floor)",
        "budget": " (to fit --time_budget)",
        "budget-provisional": " (until --time_budget has timed the run)",
    }.get(plan.reason, "")
    schedule = data_args.resolution_schedule
    line = [
        model_args.method
        + (f" {model_args.preset} r={model_args.r}" if model_args.method == "lora" else "")
        + (f" on the last {model_args.lora_layers} layers" if model_args.lora_layers else ""),
        f"lr {args.learning_rate or DEFAULT_LEARNING_RATES[model_args.method]:g}",
        f"batch {global_batch_size}",
        f"{total} steps = {plan.epochs:.1f} epochs{why}"
        if not math.isnan(plan.epochs)
        else f"{total} steps of a stream of unknown length",
        f"{image_size} px" + (f" after {'/'.join(map(str, schedule[:-1]))}" if schedule else ""),
        f"crop scale {data_args.min_crop_scale:g}-1",
        mixed_precision if mixed_precision != "no" else "fp32",
    ]
    return "Recipe: " + ", ".join(line + ([parts] if parts else []))
