"""The ``peft-vision-lora`` console script: a dispatcher whose ``train`` runs the one training loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.state import AcceleratorState
from helpers.training import make_imagefolder, make_tiny_vit

from peft_vision_lora.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random ViT and a tiny image folder with train/validation/test splits."""
    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_vit(root / "vit"), make_imagefolder(
        root / "colours", per_class={"train": 8, "validation": 2, "test": 4}
    )


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_console_script_is_the_dispatcher():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"peft-vision-lora": "peft_vision_lora.cli:main"}


def test_train_end_to_end(tiny, tmp_path):
    tiny_vit, tiny_data = tiny
    argv = [
        "train",
        "--model",
        str(tiny_vit),
        "--dataset",
        str(tiny_data),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "8",
        "--lora_length",
        "4",
        "--disable_tqdm",
    ]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["total_steps"] == 4 and metrics["test"]["num_samples"] == 12
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == 4
    # The model card records the exact command that was run.
    assert (
        f"peft-vision-lora train --model {tiny_vit} --dataset {tiny_data}"
        in (tmp_path / "out" / "README.md").read_text()
    )


def test_train_from_a_yaml_file(tiny, tmp_path):
    tiny_vit, tiny_data = tiny
    config = tmp_path / "run.yaml"
    options = {
        "model": str(tiny_vit),
        "dataset": str(tiny_data),
        "output_dir": str(tmp_path / "out"),
        "method": "linear",
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "eval_strategy": "no",
        "disable_tqdm": True,
    }
    config.write_text(yaml.safe_dump(options))
    assert main(["train", str(config)]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["method"] == "linear"


def test_usage_errors(capsys):
    assert main(["train", "--dataset", "d", "--output_dir", "o", "--warmup_ratio", "1.5"]) == 2
    assert "--warmup_ratio must be in [0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2 and "invalid choice: 'frobnicate'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0 and "--lora_length" in capsys.readouterr().out


@pytest.mark.slow  # importing the package (torch, transformers, peft) takes seconds in a fresh interpreter
def test_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "peft_vision_lora.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "train" in result.stdout and "push" in result.stdout


def test_merge_and_predict(tiny_models, tmp_path, capsys):
    import torch
    from PIL import Image

    import peft_vision_lora as pvl

    torch.manual_seed(0)
    model = pvl.build_model(tiny_models["vit"], ["red", "green"], init_lora_weights=False)
    adapter = pvl.save_pretrained(model, tmp_path / "adapter")
    Image.new("RGB", (40, 40), "red").save(tmp_path / "red.png")

    assert main(["merge", str(adapter), str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    capsys.readouterr()
    predictions = []
    for folder in (adapter, tmp_path / "merged"):
        assert main(["predict", str(folder), str(tmp_path / "red.png"), "--top_k", "2"]) == 0
        line = json.loads(capsys.readouterr().out.strip())
        assert line["image"].endswith("red.png") and [p["label"] for p in line["predictions"]] != []
        predictions.append(line["predictions"])
    assert [p["label"] for p in predictions[0]] == [p["label"] for p in predictions[1]]
    assert predictions[0][0]["score"] == pytest.approx(predictions[1][0]["score"], abs=1e-4)
