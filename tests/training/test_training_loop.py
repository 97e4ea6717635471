"""End-to-end runs of ``peft_vision_lora.training.train`` on a tiny random ViT and a tiny image folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import PIL.Image
import pytest
import torch
from helpers.training import FREEZE_DRIVER, adapter_difference, make_imagefolder
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, pipeline

import peft_vision_lora
from peft_vision_lora.data import load_image_dataset
from peft_vision_lora.training import NonFiniteLossError, parse_args, train
from peft_vision_lora.training.checkpointing import list_checkpoints

OUTPUT_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "preprocessor_config.json",
    "README.md",
    "metrics.json",
    "train_log.jsonl",
    "training_curves.png",
    "confusion_matrix.png",
)


def run(model: Path, data: Path, out: Path, *flags: str) -> dict:
    flags = ["--model", str(model), "--dataset", str(data), "--output_dir", str(out), "--disable_tqdm", *flags]
    return train(*parse_args(flags))


def test_lora_run_writes_a_portable_adapter_folder(tiny_vit, tiny_data, tmp_path):
    out = tmp_path / "run"
    metrics = run(
        tiny_vit,
        tiny_data,
        out,
        "--num_train_epochs",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "1e-2",
        "--logging_steps",
        "3",
        "--min_steps",
        "0",
    )
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["num_processes"] == 1 and metrics["eval"]["num_samples"] == 6
    assert metrics["test"]["num_samples"] == 12 and metrics["eval"]["num_samples"] == 6
    assert metrics["test"]["top1_accuracy"] >= 0.9  # colours are easy; chance is 1/3
    assert set(metrics["test"]["per_class_accuracy"]) == {"red", "green", "blue"}

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [3, 6, 9, 12, 15, 18, 21, 24]
    assert [e["step"] for e in log if "eval_top1_accuracy" in e] == [6, 12, 18, 24]  # every epoch
    assert metrics["best_step"] in {6, 12, 18, 24}
    for png in ("training_curves.png", "confusion_matrix.png"):
        assert PIL.Image.open(out / png).format == "PNG"

    card = (out / "README.md").read_text()
    assert "| test_top1_accuracy |" in card and "peft-vision-lora train --model" in card
    assert 'pipeline("image-classification", model="run")' in card

    # The folder is the model: the stock pipeline reproduces the recorded test accuracy.
    classifier = pipeline("image-classification", model=str(out))
    images = sorted((tiny_data / "test").glob("*/*.png"))
    hits = [classifier(str(p), top_k=1)[0]["label"] == p.parent.name for p in images]
    assert sum(hits) / len(hits) == pytest.approx(metrics["test"]["top1_accuracy"])
    assert isinstance(peft_vision_lora.load_model(out), torch.nn.Module)


@pytest.mark.parametrize("method", ["full", "linear"])
def test_full_and_linear_baselines(tiny_vit, tiny_data, tmp_path, method):
    out = tmp_path / method
    metrics = run(
        tiny_vit,
        tiny_data,
        out,
        "--method",
        method,
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "1e-2",
        "--mixup_alpha",
        "0.2",
        "--eval_strategy",
        "no",
    )
    assert metrics["method"] == method and "eval" not in metrics and "test" in metrics
    model = AutoModelForImageClassification.from_pretrained(out)
    base = AutoModelForImageClassification.from_pretrained(tiny_vit)
    assert model.config.id2label == {0: "blue", 1: "green", 2: "red"}
    same_backbone = torch.equal(model.vit.layers[0].attention.q_proj.weight, base.vit.layers[0].attention.q_proj.weight)
    assert same_backbone == (method == "linear")
    assert {"full": "full fine-tuning", "linear": "linear probe"}[method] in (out / "README.md").read_text()


@pytest.mark.parametrize("method", ["lora", "linear"])
def test_other_image_size_interpolates_position_embeddings(tiny_vit, tiny_data, tmp_path, method):
    out = tmp_path / f"size48-{method}"
    flags = ["--image_size", "48", "--method", method, "--max_steps", "3", "--per_device_train_batch_size", "8"]
    metrics = run(tiny_vit, tiny_data, out, *flags, "--eval_strategy", "no")
    assert metrics["test"]["num_samples"] == 12
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 48, "width": 48}
    if method == "linear":  # a whole saved model is resized for good: stock pipelines feed it 48 px images
        assert json.loads((out / "config.json").read_text())["image_size"] == 48
        prediction = pipeline("image-classification", model=str(out))(str(next((tiny_data / "test").glob("*/*.png"))))
        assert len(prediction) == 3


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_vit, tiny_data, tmp_path, monkeypatch):
    cross_entropy, calls = torch.nn.functional.cross_entropy, []

    def nan_on_third_batch(*args, **kwargs):
        calls.append(1)
        loss = cross_entropy(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_on_third_batch)
    out = tmp_path / "nan"
    with pytest.raises(
        NonFiniteLossError, match=r"Training loss is nan at step 3 .*checkpoint-2.*resume_from_checkpoint"
    ):
        # A random head: the linear probe's fit would call cross_entropy too.
        run(
            tiny_vit, tiny_data, out, "--save_steps", "2", "--max_steps", "6", "--per_device_train_batch_size", "4",
            "--head_init", "random",
        )  # fmt: skip
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    weights = load_file(list_checkpoints(out)[0] / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "adapter_model.safetensors").exists()


def test_refuses_to_mix_runs(tiny_vit, tiny_data, tmp_path):
    out = tmp_path / "run"
    run(tiny_vit, tiny_data, out, "--max_steps", "2", "--save_steps", "1", "--per_device_train_batch_size", "8")
    with pytest.raises(FileExistsError, match="--overwrite_output_dir .* or --resume_from_checkpoint latest"):
        run(tiny_vit, tiny_data, out, "--max_steps", "2")
    other = make_imagefolder(tmp_path / "animals", classes=("cat", "dog", "red"), per_class={"train": 4})
    with pytest.raises(ValueError, match=r"classes differ .*only in the dataset: \['cat', 'dog'\]"):
        run(tiny_vit, other, out, "--max_steps", "4", "--resume_from_checkpoint", "latest")


def test_without_validation_split_the_test_split_is_evaluated_once_at_the_end(tiny_vit, tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class={"train": 4, "test": 2})
    metrics = run(tiny_vit, data, tmp_path / "out", "--max_steps", "4", "--per_device_train_batch_size", "4")
    assert "eval" not in metrics and metrics["test"]["num_samples"] == 6 and metrics["best_step"] == 4
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert not [e for e in log if "eval_top1_accuracy" in e]  # nothing to select: no evaluation during training
    assert metrics["phases"]["eval_s"] > 0  # the one test evaluation, at the end


def test_without_validation_split_the_test_split_is_watched_but_never_selects(tiny_vit, tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class={"train": 4, "test": 2})
    flags = ["--max_steps", "4", "--per_device_train_batch_size", "4", "--eval_strategy", "epoch"]
    metrics = run(tiny_vit, data, tmp_path / "out", *flags)
    assert "eval" not in metrics and metrics["test"]["num_samples"] == 6
    assert metrics["best_step"] == 4  # the last weights, whatever the test accuracy along the way
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "eval_top1_accuracy" in e] == [3, 4]  # each epoch (3 steps) and the end
    assert not (tmp_path / "out" / "checkpoints" / "best_model.safetensors").exists()


def test_empty_split_fails_before_training(tiny_vit, tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class={"train": 2})
    for name in ("red", "green", "blue"):
        (data / "test" / name).mkdir(parents=True)
    (data / "test" / "red" / "broken.png").write_bytes(b"not a png")  # skipped as unreadable: the split ends up empty
    with pytest.raises(ValueError, match="'test' split of .* is empty"):
        run(tiny_vit, data, tmp_path / "out", "--max_steps", "1")
    assert not (tmp_path / "out").exists()


# Token dropout, progressive resolution (16 px in epochs 0-1, 32 px in epoch 2), EMA, LP-FT head and LoRA depth.
RECIPE_OPTIONS = [
    "--token_keep", "0.5", "--token_keep_min", "1",
    "--resolution_schedule", "16", "32", "--ema_decay", "0.8", "--head_init", "linear_probe",
    "--lora_layers", "1",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("options", [[], RECIPE_OPTIONS], ids=["defaults", "recipe-options"])
def test_sigkill_mid_epoch_then_resume_gives_the_same_adapter(tiny_vit, tiny_data, tmp_path, options):
    # 8 batches of 3 per epoch, 2 per optimizer step; checkpoints at steps 3, 6, 9; augmentation and LoRA dropout on.
    flags = [
        *options,
        "--max_steps",
        "10",
        "--per_device_train_batch_size",
        "3",
        "--gradient_accumulation_steps",
        "2",
        "--save_steps",
        "3",
        "--eval_steps",
        "5",
        "--lora_dropout",
        "0.1",
        "--learning_rate",
        "1e-2",
        "--logging_steps",
        "1",
    ]
    uninterrupted = run(tiny_vit, tiny_data, tmp_path / "uninterrupted", *flags)

    out = tmp_path / "killed"
    command = [
        sys.executable,
        str(FREEZE_DRIVER),
        "5",
        "--model",
        str(tiny_vit),
        "--dataset",
        str(tiny_data),
        "--output_dir",
        str(out),
        "--disable_tqdm",
        *flags,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = iter(process.stdout.readline, "")  # the recipe line comes first
        assert "FROZEN" in (line.strip() for line in lines), "the training subprocess ended before step 5"
        assert process.poll() is None
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3"]  # mid-epoch: 6 of 8 batches
    assert not (out / "adapter_model.safetensors").exists()

    resumed = run(tiny_vit, tiny_data, out, *flags, "--resume_from_checkpoint", "latest")
    assert adapter_difference(tmp_path / "uninterrupted", out) <= 1e-6
    assert resumed["best_step"] == uninterrupted["best_step"]
    assert resumed["test"]["loss"] == pytest.approx(uninterrupted["test"]["loss"], abs=1e-6)
    log = lambda run_dir: [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]  # noqa: E731
    for before, after in zip(log(tmp_path / "uninterrupted"), log(out), strict=True):
        assert before.keys() == after.keys() and before["step"] == after["step"]
        assert before.get("loss", 0) == pytest.approx(after.get("loss", 0), abs=1e-6)


def test_options_by_name_and_an_in_memory_dataset(tiny_vit, tiny_data, tmp_path):
    data = load_image_dataset(tiny_data)
    metrics = train(
        dataset=data,
        model=str(tiny_vit),
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=8,
        method="linear",
        disable_tqdm=True,
    )
    assert metrics["dataset"] == "in-memory DatasetDict" and metrics["total_steps"] == 2
    assert "datasets:" not in (tmp_path / "out" / "README.md").read_text()  # nothing to name in the card
    with pytest.raises(ValueError, match="lora_rank"):
        train(dataset=str(tiny_data), output_dir=str(tmp_path / "x"), lora_rank=4)
    with pytest.raises(TypeError, match="not a mix"):
        train(*parse_args(["--dataset", str(tiny_data), "--output_dir", str(tmp_path / "y")]), max_steps=3)


def test_phases_add_up_to_the_whole_run(tiny_vit, tiny_data, tmp_path):
    out = tmp_path / "out"
    flags = ["--model", str(tiny_vit), "--dataset", str(tiny_data), "--output_dir", str(out), "--disable_tqdm"]
    args = parse_args([*flags, "--max_steps", "4", "--eval_steps", "2", "--per_device_train_batch_size", "8"])
    started = time.perf_counter()
    metrics = train(*args)
    wall = time.perf_counter() - started
    phases = metrics["phases"]
    assert set(phases) == {"startup_s", "linear_probe_s", "train_s", "eval_s", "outputs_s", "total_s"}
    # Library calls count from the Trainer's construction: the phases are the call itself, to 2%. Only metrics.json's
    # own write (two fsyncs) comes after the clock stops: on this 1-second run a busy disk there is worth 0.1 s.
    assert sum(v for k, v in phases.items() if k != "total_s") == pytest.approx(phases["total_s"], rel=0.02)
    assert 0 <= wall - phases["total_s"] <= max(0.02 * wall, 0.1)
    assert json.loads((out / "metrics.json").read_text())["phases"] == phases  # written after the outputs
    evaluations = [e for e in metrics_log(out) if "eval_top1_accuracy" in e]
    assert [e["step"] for e in evaluations] == [2, 4] and all(e["eval_s"] > 0 for e in evaluations)
    # Validation twice, test once, and the best weights' re-evaluation when step 2 was the best.
    assert phases["eval_s"] >= sum(e["eval_s"] for e in evaluations)


def metrics_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_early_stopping_keeps_the_best_weights_and_stops(tiny_vit, tiny_data, tmp_path):
    # A learning rate too small to change anything: the second validation is no better than the first.
    flags = ["--num_train_epochs", "10", "--min_steps", "0", "--per_device_train_batch_size", "4"]
    flags += ["--learning_rate", "1e-12", "--head_init", "random", "--early_stopping_patience", "1"]
    metrics = run(tiny_vit, tiny_data, tmp_path / "out", *flags)
    steps_per_epoch = 24 // 4
    assert metrics["total_steps"] == 10 * steps_per_epoch and metrics["steps_done"] == 2 * steps_per_epoch
    assert metrics["best_step"] == steps_per_epoch  # the first validation stays the best
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "eval_top1_accuracy" in e] == [steps_per_epoch, 2 * steps_per_epoch]
    with pytest.raises(ValueError, match="--early_stopping_patience watches a validation split.*--val_fraction"):
        data = make_imagefolder(tmp_path / "no-val", per_class={"train": 4, "test": 2})
        run(tiny_vit, data, tmp_path / "out2", "--early_stopping_patience", "2")
