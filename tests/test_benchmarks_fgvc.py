"""benchmarks/fgvc.py finds the six datasets in their official layouts, launches one real training run per cell and
prints the reference table with our figures beside the reference's."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest
from helpers.layouts import (
    write_cifar100,
    write_cub,
    write_flowers102,
    write_nabirds,
    write_stanford_cars,
    write_stanford_dogs,
)

from peft_vision_lora.testing import make_tiny_vit

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["CIFAR-100", "CUB-200-2011", "NABirds", "Oxford Flowers", "Stanford Cars", "Stanford Dogs", "Average"]
REFERENCE = {
    "ViT-B/16 (reference)": ["92.24", "88.09", "84.11", "98.94", "85.82", "89.81", "89.84"],
    "CLIP ViT-L/14 (reference)": ["90.96", "87.69", "86.57", "95.45", "92.30", "88.31", "90.21"],
}
# Small enough for a CPU: the configs' other options (epochs, learning rates, ...) stay as they are.
TINY_RUN = [
    "--image_size",
    "32",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "8",
    "--bf16",
    "false",
    "--dataloader_num_workers",
    "0",
]


def _load_fgvc():
    spec = importlib.util.spec_from_file_location("fgvc", REPO / "benchmarks" / "fgvc.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fgvc"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


fgvc = _load_fgvc()

LAYOUT_WRITERS = {
    "cifar100": write_cifar100,
    "cub200": write_cub,
    "nabirds": write_nabirds,
    "flowers102": lambda root: write_flowers102(root / "flowers-102"),
    "stanford_cars": lambda root: write_stanford_cars(root / "stanford_cars"),
    "stanford_dogs": lambda root: write_stanford_dogs(root / "stanford_dogs"),
}


def write_layouts(root: Path, keys=tuple(LAYOUT_WRITERS)) -> Path:
    for key in keys:
        LAYOUT_WRITERS[key](root)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_layouts(tmp_path_factory.mktemp("fgvc-data"))


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


def table(stdout: str) -> dict[str, list[str]]:
    """The printed results table as {row title: cells}, after checking its header."""
    lines = stdout.splitlines()
    start = lines.index("| " + " | ".join(["Model", *COLUMNS]) + " |")
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        title, *cells = (cell.strip() for cell in line.strip("|").split("|"))
        rows[title] = cells
    return rows


def commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line.split(": ", 1)[1]) for line in stdout.splitlines() if "examples/train.py" in line]


def flag(command: list[str], name: str) -> str:
    assert command.count(name) == 1, f"{name} appears {command.count(name)} times in {command}"
    return command[command.index(name) + 1]


def test_configs_are_complete_training_configs():
    from peft_vision_lora.training import parse_args

    for backbone in fgvc.BACKBONES:
        assert sorted(p.stem for p in (fgvc.CONFIGS / backbone.key).glob("*.yaml")) == sorted(
            b.key for b in fgvc.BENCHMARKS
        )
        for benchmark in fgvc.BENCHMARKS:
            # The file examples/train.py is given on its own, as a user would run it.
            config = fgvc.CONFIGS / backbone.key / f"{benchmark.key}.yaml"
            model_args, data_args, training_args = parse_args([str(config)])
            assert model_args.model == backbone.model_id and model_args.method == "lora"
            assert Path(data_args.dataset).name == benchmark.folder
            assert Path(training_args.output_dir).parts[-2:] == (backbone.key, benchmark.key)
            assert training_args.bf16 and training_args.per_device_train_batch_size == 64
            assert 1e-4 <= training_args.learning_rate <= 5e-3 and training_args.num_train_epochs >= 20


def test_dry_run_prints_every_command_and_an_empty_table(data_root, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--data_root", str(data_root), "--output_dir", str(out), "--num_processes", "1", "--dry_run"]
    assert fgvc.main(argv) == 0
    stdout = capsys.readouterr().out

    launched = commands(stdout)
    assert len(launched) == 12
    for command, (backbone, benchmark) in zip(launched, [(m, d) for m in fgvc.BACKBONES for d in fgvc.BENCHMARKS]):
        assert command[:2] == [sys.executable, str(REPO / "examples" / "train.py")]
        assert flag(command, "--model") == backbone.model_id
        assert flag(command, "--dataset") == str(data_root / benchmark.folder)
        assert flag(command, "--output_dir") == str(out / backbone.key / benchmark.key)
        assert flag(command, "--per_device_train_batch_size") == "64"
    rows = table(stdout)
    assert rows == {
        "ViT-B/16 (ours)": [""] * 7,
        "ViT-B/16 (reference)": REFERENCE["ViT-B/16 (reference)"],
        "CLIP ViT-L/14 (ours)": [""] * 7,
        "CLIP ViT-L/14 (reference)": REFERENCE["CLIP ViT-L/14 (reference)"],
    }
    assert not out.exists()  # nothing trained, nothing written


def test_missing_datasets_are_skipped_and_reported(tmp_path, capsys):
    root = write_layouts(tmp_path / "data", ["cub200", "stanford_cars"])
    (root / "nabirds").mkdir()  # present but empty: not a usable dataset
    argv = ["--data_root", str(root), "--models", "clip-l14", "--num_processes", "4", "--dry_run"]
    assert fgvc.main([*argv, "--num_train_epochs", "3"]) == 0
    stdout = capsys.readouterr().out

    launched = commands(stdout)
    assert [Path(flag(c, "--dataset")).name for c in launched] == ["CUB_200_2011", "stanford_cars"]
    for command in launched:
        assert command[1:3] == ["launch", "--multi_gpu"] and flag(command, "--num_processes") == "4"
        assert flag(command, "--per_device_train_batch_size") == "16"  # the global batch stays 64
        assert flag(command, "--num_train_epochs") == "3"  # the user's flag replaces the config's
    assert list(table(stdout)) == ["CLIP ViT-L/14 (ours)", "CLIP ViT-L/14 (reference)"]
    assert f"CIFAR-100: missing, not found: expected {root / 'cifar-100-python'}" in stdout
    assert f"NABirds: missing, {root / 'nabirds'} is not in the official NABirds layout" in stdout


def test_unknown_training_option_fails_before_any_run(data_root, tmp_path):
    with pytest.raises(ValueError, match="vit-b16 on cifar100: .*--no_such_option"):
        fgvc.main(
            [
                "--data_root",
                str(data_root),
                "--output_dir",
                str(tmp_path),
                "--num_processes",
                "1",
                "--no_such_option",
                "1",
            ]
        )
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # launches a (failing) subprocess
def test_a_failed_run_is_reported_with_its_log(tmp_path, capsys):
    backbone, benchmark = fgvc.BACKBONES[0], fgvc.BENCHMARKS[1]
    script = "import sys; print('CUDA out of memory'); sys.exit(3)"
    run = fgvc.Run(
        backbone,
        benchmark,
        status="dry_run",
        run_dir=str(tmp_path / "run"),
        log=str(tmp_path / "x.log"),
        command=[sys.executable, "-c", script],
    )
    fgvc.launch(run)
    assert run.status == "failed" and run.top1 is None
    assert run.note == f"exit status 3, see {tmp_path / 'x.log'}"
    assert "CUDA out of memory" in (tmp_path / "x.log").read_text() and "CUDA out of memory" in capsys.readouterr().err
    assert "| ViT-B/16 (ours) |  |  |" in fgvc.results_table([run])


@pytest.mark.slow
def test_trains_every_dataset_and_fills_the_table(data_root, tiny_vit, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = [
        "--data_root",
        str(data_root),
        "--output_dir",
        str(out),
        "--models",
        "vit-b16",
        "--num_processes",
        "1",
        "--model_override",
        str(tiny_vit),
        "--max_steps",
        "2",
        *TINY_RUN,
    ]
    assert fgvc.main(argv) == 0
    stdout = capsys.readouterr().out

    rows = table(stdout)
    assert rows["ViT-B/16 (reference)"] == REFERENCE["ViT-B/16 (reference)"]
    ours = [float(cell) for cell in rows["ViT-B/16 (ours)"]]  # every cell, the average too, is a number
    summary = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["done"] * 6
    for cell, benchmark in zip(ours, fgvc.BENCHMARKS):
        metrics = json.loads((out / "vit-b16" / benchmark.key / "metrics.json").read_text())
        assert metrics["model"] == str(tiny_vit) and metrics["total_steps"] == 2
        assert cell == pytest.approx(100 * metrics["test"]["top1_accuracy"], abs=0.005)
    assert ours[-1] == pytest.approx(sum(ours[:6]) / 6, abs=0.01)
    assert summary["table"] in (out / "results.md").read_text()
    assert "trained from" in stdout and str(tiny_vit) in stdout
