"""Fine-tune a vision transformer on an image classification dataset.

The same options and training loop as ``peft-vision-lora train``; launch it on any hardware with Accelerate:

    python examples/train.py --dataset path/to/images --output_dir runs/flowers-lora
    accelerate launch --num_processes 2 examples/train.py --dataset ... --output_dir ...
    python examples/train.py config.yaml   # the same options, from a YAML or JSON file

Run ``python examples/train.py --help`` for every option.
"""

import shlex
import sys

from accelerate import PartialState

from peft_vision_lora.training import parse_args, train
from peft_vision_lora.training.clock import process_start_time


def main() -> None:
    model_args, data_args, training_args = parse_args()
    command = shlex.join(["python", *sys.argv])
    # Start-up counts from the process start: imports and launcher time are part of what a run costs.
    metrics = train(model_args, data_args, training_args, command=command, started_at=process_start_time())
    split = next((s for s in ("test", "eval") if s in metrics), None)
    if split and PartialState().is_main_process:
        print(f"{split} top-1 accuracy: {metrics[split]['top1_accuracy']:.4f} -> {training_args.output_dir}")


if __name__ == "__main__":
    main()
