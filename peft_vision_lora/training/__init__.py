"""Fine-tuning: one training loop behind ``peft-vision-lora train``, ``examples/train.py`` and :func:`train`."""

from .arguments import DataArguments, ModelArguments, TrainingArguments, parse_args, to_command
from .loop import NonFiniteLossError, train

__all__ = [
    "DataArguments",
    "ModelArguments",
    "NonFiniteLossError",
    "TrainingArguments",
    "parse_args",
    "to_command",
    "train",
]
