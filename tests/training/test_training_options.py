"""Options: flags, aliases and config files parse into the argument dataclasses; bad values name their flag."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import yaml

from peft_vision_lora.data import TransformOptions
from peft_vision_lora.data.augment import Augmentation
from peft_vision_lora.training import DataArguments, ModelArguments, TrainingArguments, parse_args, to_command
from peft_vision_lora.training.arguments import steps_every


def test_flags_use_transformers_names_and_aliases():
    model, data, training = parse_args(
        [
            "--dataset",
            "data/",
            "--output_dir",
            "out",
            "--lora_length",
            "4",
            "--per_device_train_batch_size",
            "8",
            "--gradient_accumulation_steps",
            "2",
            "--label_smoothing_factor",
            "0.1",
            "--hub_private_repo",
            "--eval_steps",
            "5",
            "--hflip",
            "0",
        ]
    )
    assert model.r == 4 and model.method == "lora"
    assert data.dataset == "data/" and data.hflip == 0
    assert training.per_device_train_batch_size == 8 and training.gradient_accumulation_steps == 2
    assert training.label_smoothing == 0.1 and training.hub_private
    # --eval_steps alone means evaluating by steps, as users of transformers' Trainer would have to spell out.
    assert (training.eval_strategy, training.save_strategy) == ("steps", "epoch")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_gives_the_same_options_as_flags(tmp_path, suffix):
    options = {
        "dataset": "data/", "output_dir": "out", "method": "linear", "learning_rate": 0.01, "bf16": True,
        "image_size": 112,
    }  # fmt: skip
    path = tmp_path / f"run{suffix}"
    path.write_text(yaml.safe_dump(options) if suffix == ".yaml" else json.dumps(options))
    from_file = parse_args([str(path)])
    from_flags = parse_args(
        ["--dataset", "data/", "--output_dir", "out", "--method", "linear", "--learning_rate", "0.01", "--bf16",
         "--image_size", "112"]
    )  # fmt: skip
    assert from_file == from_flags
    assert from_file[2].bf16 is True
    assert from_file[0].image_size == 112  # a model option: the model, its processor and the transforms share it


def test_eval_steps_as_a_fraction_of_the_run():
    assert parse_args(["--output_dir", "o", "--eval_steps", "5"])[2].eval_steps == 5
    fraction = parse_args(["--output_dir", "o", "--eval_steps", "0.25"])[2]
    assert fraction.eval_strategy == "steps"
    assert [steps_every(fraction.eval_steps, total) for total in (100, 6, 30, 1)] == [25, 2, 8, 1]
    assert steps_every(0.1, 30) == 3  # 0.1 * 30 is 3.0000000000000004 in floats
    with pytest.raises(ValueError, match="--eval_steps must be whole steps or a fraction below 1, got 2.5"):
        TrainingArguments(output_dir="o", eval_steps=2.5)


def test_command_reproduces_the_options():
    args = parse_args(
        [
            "--dataset",
            "d",
            "--output_dir",
            "o",
            "--r",
            "4",
            "--hflip",
            "0",
            "--gradient_checkpointing",
            "--max_steps",
            "7",
            "--resolution_schedule",
            "112",
            "224",
            "--token_keep",
            "0.5",
        ]
    )
    command = to_command(*args)
    assert command.startswith("peft-vision-lora train ")
    assert parse_args(command.split()[2:]) == args


@pytest.mark.parametrize(
    ("make", "flag"),
    [
        (lambda: ModelArguments(method="adapter"), "--method"),
        (lambda: ModelArguments(preset="everything"), "--preset"),
        (lambda: ModelArguments(r=0), "--r"),
        (lambda: ModelArguments(normalization="cifar"), "--normalization"),
        (lambda: DataArguments(val_fraction=1.5), "--val_fraction"),
        (lambda: DataArguments(hflip=2), "--hflip"),
        (lambda: TrainingArguments("o", per_device_train_batch_size=0), "--per_device_train_batch_size"),
        (lambda: TrainingArguments("o", warmup_ratio=1.0), "--warmup_ratio"),
        (lambda: TrainingArguments("o", lr_scheduler_type="cosine_annealing"), "--lr_scheduler_type"),
        (lambda: TrainingArguments("o", bf16=True, fp16=True), "--bf16"),
        (lambda: TrainingArguments("o", report_to="mlflow"), "--report_to"),
        (lambda: TrainingArguments("o", push_to_hub=True), "--hub_model_id"),
        (lambda: TrainingArguments("o", eval_strategy="steps"), "--eval_steps"),
        (lambda: TrainingArguments("o", token_keep=0), "--token_keep"),
        (lambda: TrainingArguments("o", token_keep=1.5), "--token_keep"),
        (lambda: TrainingArguments("o", token_keep_min=0), "--token_keep_min"),
        (lambda: TrainingArguments("o", ema_decay=1), "--ema_decay"),
        (lambda: TrainingArguments("o", min_steps=-1), "--min_steps"),
        (lambda: ModelArguments(lora_layers=0), "--lora_layers"),
        (lambda: DataArguments(resolution_schedule=[0, 224]), "--resolution_schedule"),
    ],
)
def test_invalid_options_name_the_flag(make, flag):
    with pytest.raises(ValueError, match=flag):
        make()


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        parse_args([str(tmp_path / "nope.yaml")])


def test_augmentation_flags_are_the_transform_options():
    """The augmentation fields are declared once: every flag reaches ImageTransforms unchanged, defaults included."""
    _, data, _ = parse_args(
        ["--dataset", "d", "--output_dir", "o", "--min_crop_scale", "0.5", "--auto_augment", "rand"]
    )
    options = TransformOptions(**data.transform_options(seed=3))
    for field in fields(Augmentation):
        assert getattr(options, field.name) == getattr(data, field.name)
    assert (options.min_crop_scale, options.auto_augment, options.seed) == (0.5, "rand", 3)
    assert TransformOptions().min_crop_scale == DataArguments().min_crop_scale
    with pytest.raises(ValueError, match="--magnitude"):
        parse_args(["--dataset", "d", "--output_dir", "o", "--magnitude", "40"])
