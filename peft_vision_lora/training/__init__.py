"""Fine-tuning: one training loop behind ``peft-vision-lora train``, ``examples/train.py`` and :func:`train`."""

from .arguments import DataArguments, ModelArguments, TrainingArguments, parse_args, to_command
from .hub import HubPushError, push_to_hub
from .loop import NonFiniteLossError, train

__all__ = [
    "DataArguments",
    "HubPushError",
    "ModelArguments",
    "NonFiniteLossError",
    "TrainingArguments",
    "parse_args",
    "push_to_hub",
    "to_command",
    "train",
]
