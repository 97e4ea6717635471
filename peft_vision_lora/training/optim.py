"""AdamW parameter groups and the learning-rate schedule.

Weight decay is decided by what a parameter *is*, not by its name: only the weight matrices of Linear and
convolution layers (LoRA factors included) are decayed. Biases, norm scales, layer-scale vectors, DoRA magnitudes
and free-standing embeddings (class token, position embeddings, ``nn.Embedding`` tables) are not, since pulling
them towards zero has no regularising meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import get_scheduler

from ..architectures import get_architecture


def decayed_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters that get weight decay: weight matrices of Linear/conv layers and LoRA factors."""
    decayed = set()
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and module.weight.ndim >= 2:
            decayed.add(id(module.weight))
        if isinstance(module, LoraLayer):
            # LoRA factors of adapted embeddings are plain Parameters in ParameterDicts, not Linear weights.
            for factors in (module.lora_embedding_A, module.lora_embedding_B):
                decayed.update(id(p) for p in factors.values() if p.ndim >= 2)
    return decayed


def head_parameters(model: nn.Module) -> set[int]:
    """Ids of the classification head's parameters (inside PEFT's ``modules_to_save`` wrapper, if any)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    head = getattr(base, get_architecture(base).head)
    return {id(p) for p in head.parameters()}


def parameter_groups(
    model: nn.Module, *, learning_rate: float, weight_decay: float, head_lr: float | None = None
) -> list[dict]:
    """AdamW groups of the trainable parameters: (backbone, head) x (decay, no decay), empty groups dropped."""
    decayed, head = decayed_parameters(model), head_parameters(model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault((id(param) in head, id(param) in decayed), []).append(param)
    result = []
    for (is_head, decay), params in sorted(groups.items()):
        result.append(
            {
                "name": f"{'head' if is_head else 'backbone'}{'' if decay else '_no_decay'}",
                "params": params,
                "lr": head_lr if is_head and head_lr is not None else learning_rate,
                "weight_decay": weight_decay if decay else 0.0,
            }
        )
    if not result:
        raise ValueError("The model has no trainable parameters.")
    return result


def build_optimizer(
    model: nn.Module, *, learning_rate: float, weight_decay: float, head_lr: float | None = None
) -> torch.optim.AdamW:
    groups = parameter_groups(model, learning_rate=learning_rate, weight_decay=weight_decay, head_lr=head_lr)
    return torch.optim.AdamW(groups, lr=learning_rate)


def warmup_steps(total_steps: int, *, warmup_ratio: float = 0.0, warmup_steps: int = 0) -> int:
    """``warmup_steps`` if given, else ``warmup_ratio`` of the run (rounded up), as in transformers' Trainer."""
    return warmup_steps if warmup_steps > 0 else math.ceil(warmup_ratio * total_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, *, total_steps: int, num_warmup_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' schedule ``name`` (``cosine``, ``linear``, ``constant_with_warmup``, ...) over ``total_steps``."""
    return get_scheduler(name, optimizer, num_warmup_steps=num_warmup_steps, num_training_steps=total_steps)


# The --min_steps floor lengthens small datasets' runs, but never past this many epochs: on a few hundred images a
# fixed step count means a dozen epochs, which overtrain (a 2-class set of 245 photos peaked at 6 epochs of 14).
MAX_FLOOR_EPOCHS = 5


@dataclass(frozen=True)
class StepPlan:
    """How long a run is in optimizer steps, how that maps onto epochs of its data, and what set it."""

    batches_per_epoch: int  # loader batches per epoch; 0: a stream of unknown length
    steps_per_epoch: int
    total_steps: int
    num_epochs: int
    reason: str = "epochs"  # epochs, max_steps, floor (--min_steps), budget[-provisional] (--time_budget)

    @property
    def epochs(self) -> float:
        """The run's length in epochs (nan for a stream of unknown length)."""
        return self.total_steps / self.steps_per_epoch if self.steps_per_epoch else math.nan

    def with_total(self, total_steps: int, reason: str) -> StepPlan:
        num_epochs = math.ceil(total_steps / self.steps_per_epoch) if self.steps_per_epoch else 1
        return StepPlan(self.batches_per_epoch, self.steps_per_epoch, total_steps, num_epochs, reason)


def plan_steps(
    batches_per_epoch: int, *, gradient_accumulation_steps: int, num_train_epochs: float, max_steps: int, min_steps: int
) -> StepPlan:
    """``max_steps`` if set, else ``num_train_epochs`` of the data with a floor of ``min_steps`` for small datasets
    (at most :data:`MAX_FLOOR_EPOCHS` epochs)."""
    steps_per_epoch = math.ceil(batches_per_epoch / gradient_accumulation_steps)
    plan = StepPlan(batches_per_epoch, steps_per_epoch, 0, 1)
    if max_steps > 0:
        return plan.with_total(max_steps, "max_steps")
    epochs = math.ceil(num_train_epochs * steps_per_epoch)
    floor = min(min_steps, MAX_FLOOR_EPOCHS * steps_per_epoch)
    return plan.with_total(max(epochs, floor), "floor" if floor > epochs else "epochs")
