"""PEFT's image-classification notebook flow with ``transformers.Trainer``, on the package's pieces.

The model, LoRA config and ``Trainer`` are the notebook's (``target_modules=["query", "value"]`` included: the
package adapts ``q_proj``/``v_proj`` on transformers 5); the package supplies the data, transforms, collate,
metrics, the recipe's callbacks and a folder that the stock pipeline opens.

    python examples/trainer_flow.py --model ../shared/models/vit-small-patch14-dinov2-imgfocus \\
        --dataset ../shared/data/flowers12 --output_dir runs/trainer-flow --num_train_epochs 3

Every ``transformers.TrainingArguments`` flag works; the defaults are the package's recipe (lr 2e-3, batch 32,
10% warmup, cosine). Writes ``<output_dir>/adapter`` (``pvl.save_pretrained``: labels, processor, model card) and
``<output_dir>/peft`` (stock ``PeftModel.save_pretrained``), reloads the stock one as the notebook does and
classifies a test image through ``pipeline("image-classification")`` with each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import AutoModelForImageClassification, HfArgumentParser, Trainer, TrainingArguments, pipeline

import peft_vision_lora as pvl
from peft_vision_lora.training.trainer import (
    EpochCallback,
    LinearProbeHeadCallback,
    TokenDropoutCallback,
    collator,
    metrics_for_trainer,
)


@dataclass
class FlowArguments:
    model: str = field(metadata={"help": "Local folder or Hub id of a ViT, CLIP (vision) or DINOv2 checkpoint."})
    dataset: str = field(metadata={"help": "Anything pvl.load_image_dataset reads (an image folder, ...)."})
    image_size: int | None = field(default=None, metadata={"help": "Training size; default: the checkpoint's."})
    shots: int | None = field(default=None, metadata={"help": "Train images per class (default: all)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N images."})
    token_keep: float = field(default=0.5, metadata={"help": "Token dropout: fraction of patch tokens kept (1: off)."})
    head_init: str = field(default="linear_probe", metadata={"help": "linear_probe (LP-FT) or random."})


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((FlowArguments, TrainingArguments))
    parser.set_defaults(
        learning_rate=2e-3,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        warmup_steps=0.1,  # a float below 1 is a fraction of the steps
        lr_scheduler_type="cosine",
        num_train_epochs=3,
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=10,
        report_to="none",
    )
    flow, args = parser.parse_args_into_dataclasses(argv)
    args.remove_unused_columns = False  # the transform needs the "image" column the model's forward does not take
    args.label_names = ["labels"]

    data = pvl.load_image_dataset(flow.dataset, shots=flow.shots, seed=args.seed)
    labels = data["train"].features["label"].names
    eval_split = data["validation" if "validation" in data else "test"]
    if flow.max_eval_samples is not None:
        eval_split = eval_split.select(range(min(flow.max_eval_samples, len(eval_split))))

    # The notebook's model and LoRA config.
    model = AutoModelForImageClassification.from_pretrained(
        flow.model,
        label2id={label: i for i, label in enumerate(labels)},
        id2label=dict(enumerate(labels)),
        ignore_mismatched_sizes=True,
    )
    config = LoraConfig(
        r=16,
        lora_alpha=16,
        target_modules=["query", "value"],
        lora_dropout=0.1,
        bias="none",
        modules_to_save=["classifier"],
    )
    lora_model = get_peft_model(model, config)
    lora_model.print_trainable_parameters()

    # The package's pieces: transforms from the checkpoint's processor, collate, metrics, recipe callbacks.
    train_tf = pvl.ImageTransforms.from_pretrained(flow.model, train=True, image_size=flow.image_size)
    eval_tf = pvl.ImageTransforms.from_pretrained(flow.model, image_size=flow.image_size)
    collate = collator(model, eval_tf.size[0])
    callbacks = [EpochCallback(train_tf)]
    if flow.token_keep < 1:
        callbacks.append(TokenDropoutCallback(flow.token_keep))
    if flow.head_init == "linear_probe":
        callbacks.append(LinearProbeHeadCallback(data["train"].with_transform(eval_tf), collate=collate))

    trainer = Trainer(
        lora_model,
        args,
        train_dataset=data["train"].with_transform(train_tf),
        eval_dataset=eval_split.with_transform(eval_tf),
        data_collator=collate,
        compute_metrics=metrics_for_trainer(labels),
        callbacks=callbacks,
    )
    trainer.train()
    metrics = trainer.evaluate()
    print(json.dumps({k: round(v, 4) for k, v in metrics.items() if not k.startswith("eval_accuracy_")}))

    # Two folders: the package's (labels, processor, card: every Hugging Face loader opens it) and stock PEFT's.
    out = Path(args.output_dir)
    pvl.save_pretrained(lora_model, out / "adapter", pvl.load_image_processor(flow.model))
    lora_model.save_pretrained(out / "peft")

    # The notebook's inference: PeftConfig -> base model with the labels -> PeftModel.from_pretrained.
    peft_config = PeftConfig.from_pretrained(out / "peft")
    base = AutoModelForImageClassification.from_pretrained(
        peft_config.base_model_name_or_path,
        label2id={label: i for i, label in enumerate(labels)},
        id2label=dict(enumerate(labels)),
        ignore_mismatched_sizes=True,
    )
    inference_model = PeftModel.from_pretrained(base, out / "peft").eval()
    example = eval_split.with_transform(eval_tf)[0]
    with torch.no_grad():
        logits = inference_model(**collate([example])).logits[0]
    print(f"PeftModel.from_pretrained({out / 'peft'}): {labels[int(logits.argmax())]}")

    # The stock pipeline opens both folders; the stock one learns its labels (and, where the base ships none, its
    # image processor) from the caller.
    image = eval_split[0]["image"]
    top = pipeline("image-classification", model=str(out / "adapter"))(image, top_k=1)[0]
    print(f"pipeline({out / 'adapter'}): {top['label']} {top['score']:.2f}")
    classify = pipeline(
        "image-classification",
        model=str(out / "peft"),
        image_processor=pvl.load_image_processor(flow.model),
        model_kwargs={"id2label": dict(enumerate(labels))},
    )
    top = classify(image, top_k=1)[0]
    print(f"pipeline({out / 'peft'}): {top['label']} {top['score']:.2f}")
    return metrics


if __name__ == "__main__":
    main()
