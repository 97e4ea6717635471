"""Training on tar shards: step-based runs, evaluation splits, and an exact resume after SIGKILL in two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from datasets import Image
from helpers.training import FREEZE_DRIVER, accelerate_launcher, adapter_difference, free_port

from peft_vision_lora.data import load_image_dataset
from peft_vision_lora.data.shard_writer import write_shards
from peft_vision_lora.evaluation.folder import evaluate_folder
from peft_vision_lora.training import parse_args, train
from peft_vision_lora.training.checkpointing import list_checkpoints

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "train.py"


@pytest.fixture(scope="module")
def tiny_shards(tiny_data, tmp_path_factory) -> Path:
    """tiny_data as shards of 4 samples: 6 train, 2 validation and 3 test shards."""
    out = tmp_path_factory.mktemp("tiny-shards") / "colours"
    write_shards(tiny_data, out, shard_size=4)
    return out


def run(tiny_vit, dataset, out, *flags):
    args = ["--model", str(tiny_vit), "--dataset", str(dataset), "--output_dir", str(out), "--disable_tqdm", *flags]
    return train(*parse_args(args))


def test_training_on_a_shard_folder_and_on_a_pattern(tiny_vit, tiny_data, tiny_shards, tmp_path):
    metrics = run(tiny_vit, tiny_shards, tmp_path / "folder", "--max_steps", "6", "--per_device_train_batch_size",
                  "4", "--eval_steps", "3", "--shuffle_buffer", "8", "--learning_rate", "1e-2")  # fmt: skip
    assert metrics["total_steps"] == 6 and metrics["train"]["stream"]["units"] == 6
    assert metrics["train"]["stream"]["skipped_bad_samples"] == 0
    # The manifest's validation and test splits are evaluated whole; the run learns the colours.
    assert metrics["eval"]["num_samples"] == 6 and metrics["test"]["num_samples"] == 12
    assert metrics["test"]["top1_accuracy"] > 0.5
    assert (tmp_path / "folder" / "adapter_model.safetensors").is_file()
    log = [json.loads(line) for line in (tmp_path / "folder" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "eval_loss" in e] == [3, 6] and log[0]["epoch"] is not None

    # A pattern with evaluation data from an image folder; nothing tells the stream's length.
    pattern = f"{tiny_shards}/train-{{000000..000005}}.tar"
    metrics = run(tiny_vit, pattern, tmp_path / "pattern", "--max_steps", "2", "--per_device_train_batch_size", "4",
                  "--eval_dataset", str(tiny_data), "--head_init", "random")  # fmt: skip
    assert metrics["eval"]["num_samples"] == 6 and metrics["test"]["num_samples"] == 12
    log = [json.loads(line) for line in (tmp_path / "pattern" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["epoch"] is None

    # Evaluation shards given as a pattern take the training classes and the split their file name says.
    metrics = run(tiny_vit, pattern, tmp_path / "eval-pattern", "--max_steps", "1", "--head_init", "random",
                  "--eval_dataset", f"{tiny_shards}/validation-{{000000..000001}}.tar")  # fmt: skip
    assert metrics["eval"]["num_samples"] == 6 and "test" not in metrics
    # `peft-vision-lora evaluate` reads shards too: a shard folder's split, or a pattern.
    folder_test = evaluate_folder(tmp_path / "folder", tiny_shards, output_dir=tmp_path / "e1")
    pattern_test = evaluate_folder(tmp_path / "folder", f"{tiny_shards}/test-{{000000..000002}}.tar",
                                   output_dir=tmp_path / "e2")  # fmt: skip
    assert folder_test["num_samples"] == pattern_test["num_samples"] == 12
    assert folder_test["top1_accuracy"] == pattern_test["top1_accuracy"]


def test_stream_options_are_checked_before_training(tiny_vit, tiny_data, tiny_shards, tmp_path):
    with pytest.raises(ValueError, match="--max_steps N is required with tar shards"):
        run(tiny_vit, tiny_shards, tmp_path / "a")
    with pytest.raises(ValueError, match="--resolution_schedule needs epochs"):
        run(tiny_vit, tiny_shards, tmp_path / "b", "--max_steps", "2", "--resolution_schedule", "16", "32")
    (tmp_path / "other.txt").write_text("cyan\nmagenta\nyellow\n")
    with pytest.raises(ValueError, match="the training shards' label file has"):
        run(tiny_vit, tiny_shards, tmp_path / "c", "--max_steps", "2", "--label_file", str(tmp_path / "other.txt"),
            "--eval_dataset", str(tiny_data))  # fmt: skip
    assert not any((tmp_path / name).exists() for name in "abc")


@pytest.mark.slow
def test_sigkill_then_resume_with_shards_in_two_processes_gives_the_same_adapter(tiny_vit, tiny_shards, tmp_path):
    # 2 processes x 2 loader workers = 4 readers over 6 shards; batches of 2 per process, checkpoints at 3 and 6.
    flags = [
        "--model", str(tiny_vit), "--dataset", str(tiny_shards), "--max_steps", "8",
        "--per_device_train_batch_size", "2", "--dataloader_num_workers", "2", "--shuffle_buffer", "3",
        "--save_steps", "3", "--eval_steps", "4", "--per_device_eval_batch_size", "5", "--lora_dropout", "0.1",
        "--learning_rate", "1e-2", "--logging_steps", "1", "--disable_tqdm",
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def launch(script: Path, out: Path, *extra: str, **kwargs) -> list[str]:
        launcher = [*accelerate_launcher(), "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--main_process_port", str(free_port())]  # fmt: skip
        return [*launcher, str(script), *flags, "--output_dir", str(out), *extra]

    uninterrupted = tmp_path / "uninterrupted"
    result = subprocess.run(launch(EXAMPLE, uninterrupted), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _freeze(launch(FREEZE_DRIVER, killed), FREEZE_DRIVER),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert "FROZEN" in (line.strip() for line in iter(process.stdout.readline, "")), "ended before step 5"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert [p.name for p in list_checkpoints(killed)] == ["checkpoint-3"]
    state = json.loads((killed / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert len(state["data_state"]) == 2 and all(len(s["positions"]) == 2 for s in state["data_state"])

    result = subprocess.run(
        launch(EXAMPLE, killed, "--resume_from_checkpoint", "latest"), env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert adapter_difference(uninterrupted, killed) <= 1e-6
    before, after = (json.loads((d / "metrics.json").read_text()) for d in (uninterrupted, killed))
    assert before["num_processes"] == after["num_processes"] == 2
    assert after["test"]["loss"] == pytest.approx(before["test"]["loss"], abs=1e-6)


def _freeze(command: list[str], driver: Path) -> list[str]:
    """The launch command with the freeze driver's step count (5) right after the driver script."""
    at = command.index(str(driver)) + 1
    return [*command[:at], "5", *command[at:]]


def test_streaming_a_parquet_dataset(tiny_vit, tiny_data, tmp_path):
    data = load_image_dataset(tiny_data).cast_column("image", Image(decode=False))
    folder = tmp_path / "parquet" / "data"
    folder.mkdir(parents=True)
    for split, ds in data.items():
        with_bytes = ds.map(lambda row: {"image": {"bytes": Path(row["image"]["path"]).read_bytes(), "path": None}})
        for part in range(2):  # two files: two units to split between readers
            with_bytes.shard(2, part).to_parquet(folder / f"{split}-0000{part}-of-00002.parquet")
    metrics = run(tiny_vit, tmp_path / "parquet", tmp_path / "out", "--streaming", "--max_steps", "3",
                  "--per_device_train_batch_size", "4", "--dataloader_num_workers", "2")  # fmt: skip
    assert metrics["train"]["stream"]["units"] == 2 and metrics["train"]["stream"]["source"].startswith("streaming")
    assert metrics["eval"]["num_samples"] == 6 and metrics["test"]["num_samples"] == 12


def test_linear_probe_features_of_a_stream_are_those_of_its_images(tiny_vit, tiny_data, tiny_shards):
    """LP-FT on shards fits the head on the stream's prefix: the same features (eval transform) as the folder's."""
    from accelerate import Accelerator

    from peft_vision_lora.data import ImageTransforms
    from peft_vision_lora.data.stream_sources import shard_source
    from peft_vision_lora.processing import load_image_processor
    from peft_vision_lora.training import ModelArguments
    from peft_vision_lora.training.features import backbone_features
    from peft_vision_lora.training.model import build_training_model, head_module
    from peft_vision_lora.training.stream_data import stream_prefix_features

    source = shard_source(str(tiny_shards))
    model = build_training_model(ModelArguments(model=str(tiny_vit)), str(tiny_vit), source.names)
    transforms = ImageTransforms.from_processor(load_image_processor(str(tiny_vit)), train=False)
    accelerator = Accelerator(cpu=True)
    streamed = stream_prefix_features(source, transforms, model, head_module(model), accelerator, {},
                                      seed=0, shuffle_buffer=8, batch_size=5)  # fmt: skip
    folder = load_image_dataset(str(tiny_data))["train"]
    whole = backbone_features(model, folder, transforms, accelerator, batch_size=7)
    assert len(streamed) == len(whole) == 24  # the whole stream: shorter than the probe's sample limit

    def rows(features):  # order-free: sorted by label, then by the first feature
        keys = sorted(range(len(features)), key=lambda i: (int(features.labels[i]), float(features.features[i, 0])))
        return features.features[keys], features.labels[keys]

    (a, la), (b, lb) = rows(streamed), rows(whole)
    assert la.tolist() == lb.tolist()
    assert (a - b).abs().max() < 1e-5
    prefix = stream_prefix_features(source, transforms, model, head_module(model), accelerator, {},
                                    seed=0, shuffle_buffer=8, batch_size=5, limit=10)  # fmt: skip
    assert len(prefix) == 10  # --linear_probe_shots on a stream: its first shots x classes images
