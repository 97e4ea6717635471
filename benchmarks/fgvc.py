"""Reproduce the reference table: LoRA on six image classification benchmarks with ViT-B/16 and CLIP ViT-L/14.

For each model and each dataset found under ``--data_root``, train with the recipe of
``benchmarks/configs/fgvc/<model>/<dataset>.yaml`` (one ``accelerate launch`` per run; plain ``python`` for one
process, where the launcher adds nothing), read the test top-1 from the run's ``metrics.json``, and print our figures
beside the reference ones in the reference's layout. The table also goes to ``<output_dir>/results.md`` and, with
every run's command, status and time, to ``<output_dir>/results.json``.

The datasets, unpacked from their official archives under DATA_ROOT (a folder may instead hold the FGVC
``train.json`` / ``val.json`` / ``test.json`` split files next to its images):

    DATA_ROOT/cifar-100-python/   meta, train, test
    DATA_ROOT/CUB_200_2011/       images/, images.txt, image_class_labels.txt, train_test_split.txt, classes.txt
    DATA_ROOT/nabirds/            the same files as CUB-200-2011, plus hierarchy.txt
    DATA_ROOT/flowers-102/        jpg/, imagelabels.mat, setid.mat
    DATA_ROOT/stanford_cars/      cars_train/, cars_test/, devkit/, cars_test_annos_withlabels.mat
    DATA_ROOT/stanford_dogs/      Images/, train_list.mat, test_list.mat

Datasets that are absent are skipped and reported. Every flag this script does not know is passed to every training
run and overrides the configs, e.g. ``--num_train_epochs 5``. Examples::

    python benchmarks/fgvc.py --data_root data/fgvc --num_processes 8
    python benchmarks/fgvc.py --data_root data/fgvc --models vit-b16 --datasets cub200,stanford_dogs
    python benchmarks/fgvc.py --data_root data/fgvc --dry_run
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "benchmarks" / "configs" / "fgvc"
TRAIN_SCRIPT = REPO / "examples" / "train.py"


@dataclass(frozen=True)
class Benchmark:
    """One dataset: ``key`` is also its layout name in ``peft_vision_lora.data.LAYOUTS``."""

    key: str
    title: str
    folder: str  # under DATA_ROOT


@dataclass(frozen=True)
class Backbone:
    """One model row of the table, with the reference figures (test top-1, %) per benchmark key and on average."""

    key: str
    title: str
    model_id: str
    reference: dict[str, float]
    reference_average: float


BENCHMARKS = (
    Benchmark("cifar100", "CIFAR-100", "cifar-100-python"),
    Benchmark("cub200", "CUB-200-2011", "CUB_200_2011"),
    Benchmark("nabirds", "NABirds", "nabirds"),
    Benchmark("flowers102", "Oxford Flowers", "flowers-102"),
    Benchmark("stanford_cars", "Stanford Cars", "stanford_cars"),
    Benchmark("stanford_dogs", "Stanford Dogs", "stanford_dogs"),
)
BACKBONES = (
    Backbone(
        "vit-b16",
        "ViT-B/16",
        "google/vit-base-patch16-224-in21k",
        dict(zip([b.key for b in BENCHMARKS], (92.24, 88.09, 84.11, 98.94, 85.82, 89.81))),
        89.84,
    ),
    Backbone(
        "clip-l14",
        "CLIP ViT-L/14",
        "openai/clip-vit-large-patch14",
        dict(zip([b.key for b in BENCHMARKS], (90.96, 87.69, 86.57, 95.45, 92.30, 88.31))),
        90.21,
    ),
)


@dataclass
class Run:
    """One (model, dataset) cell: what was run and what came of it."""

    backbone: Backbone
    benchmark: Benchmark
    status: str  # dry_run, missing, done, failed
    dataset_dir: str | None = None
    run_dir: str | None = None
    command: list[str] | None = None
    log: str | None = None
    top1: float | None = None
    seconds: float | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.backbone.key,
            "dataset": self.benchmark.key,
            "status": self.status,
            "top1": self.top1,
            "reference": self.backbone.reference[self.benchmark.key],
            "dataset_dir": self.dataset_dir,
            "run_dir": self.run_dir,
            "command": shlex.join(self.command) if self.command else None,
            "log": self.log,
            "seconds": self.seconds,
            "note": self.note,
        }


# ----------------------------------------------------------------------------------------------------- the runs


def find_dataset(data_root: Path, benchmark: Benchmark) -> tuple[Path | None, str | None]:
    """The dataset folder of ``benchmark`` under ``data_root``, or None and why it is not usable."""
    from peft_vision_lora.data import LAYOUTS

    folder = data_root / benchmark.folder
    if not folder.is_dir():
        return None, f"not found: expected {folder}"
    for layout in (benchmark.key, "fgvc_json"):
        if LAYOUTS[layout].find(folder) is not None:
            return folder, None
    return None, f"{folder} is not in the official {benchmark.title} layout nor has FGVC train/test.json files"


def load_config(backbone: Backbone, benchmark: Benchmark) -> dict[str, Any]:
    path = CONFIGS / backbone.key / f"{benchmark.key}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"No config for {backbone.key} on {benchmark.key}: {path} is missing.")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def option_names(flags: list[str]) -> set[str]:
    """Option names (without dashes) in a list of command-line flags."""
    return {flag[2:].split("=", 1)[0] for flag in flags if flag.startswith("--") and len(flag) > 2}


def to_flags(options: dict[str, Any]) -> list[str]:
    flags = []
    for name, value in options.items():
        if isinstance(value, bool):
            flags += [f"--{name}"] if value else [f"--{name}", "false"]
        elif value is not None:
            flags += [f"--{name}", str(value)]
    return flags


def train_command(
    config: dict[str, Any],
    *,
    dataset_dir: Path,
    run_dir: Path,
    num_processes: int,
    overrides: list[str],
    model_override: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
) -> list[str]:
    """The command of one run: the config as flags, then the run's own options, then the user's overrides."""
    from peft_vision_lora.training.checkpointing import list_checkpoints

    options = {**config, "dataset": str(dataset_dir), "output_dir": str(run_dir)}
    if model_override:
        options["model"] = model_override
    if max_steps:
        options["max_steps"] = max_steps
    # The config's batch is the global batch: splitting it keeps the recipe the same on any number of processes.
    overridden = option_names(overrides)
    batch = options.get("per_device_train_batch_size")
    if batch and num_processes > 1 and "per_device_train_batch_size" not in overridden:
        if batch % num_processes:
            raise ValueError(f"The global batch {batch} does not split evenly over {num_processes} processes.")
        options["per_device_train_batch_size"] = batch // num_processes
    if resume and list_checkpoints(run_dir):
        options["resume_from_checkpoint"] = "latest"
    else:
        options["overwrite_output_dir"] = True
    flags = to_flags({k: v for k, v in options.items() if k not in overridden}) + overrides
    if num_processes == 1:
        launcher = [sys.executable]
    else:
        precision = "bf16" if options.get("bf16") else "fp16" if options.get("fp16") else "no"
        accelerate = Path(sys.executable).with_name("accelerate")
        launcher = [str(accelerate) if accelerate.is_file() else "accelerate", "launch", "--multi_gpu"]
        launcher += ["--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", precision]
        launcher += ["--dynamo_backend", "no"]
    return [*launcher, str(TRAIN_SCRIPT), *flags]


def check_command(command: list[str], what: str) -> None:
    """Parse the training flags with the training script's own parser, so bad options fail before any run starts."""
    from peft_vision_lora.training import parse_args

    flags = command[command.index(str(TRAIN_SCRIPT)) + 1 :]
    try:
        parse_args(flags)
    except SystemExit as exc:  # argparse has printed the reason
        raise ValueError(f"{what}: the training script rejects its options (see above).") from exc
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from exc


def read_test_top1(run_dir: Path) -> float:
    """Test top-1 accuracy (%) from the run's ``metrics.json``."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    if "test" not in metrics:
        raise KeyError(f"{path} has no test results (splits: {[k for k in ('eval', 'test') if k in metrics]})")
    return 100 * metrics["test"]["top1_accuracy"]


def launch(run: Run) -> None:
    """Train, with the output in the run's log file; fills in the status, top-1 and time of ``run``."""
    log = Path(run.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        returncode = subprocess.run(run.command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    run.seconds = round(time.perf_counter() - started, 1)
    if returncode != 0:
        run.status, run.note = "failed", f"exit status {returncode}, see {log}"
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        print("\n".join(f"    {line}" for line in tail), file=sys.stderr)
        return
    try:
        run.top1 = read_test_top1(Path(run.run_dir))
        run.status = "done"
    except (OSError, KeyError, ValueError) as exc:
        run.status, run.note = "failed", f"no test top-1: {exc}"


# ---------------------------------------------------------------------------------------------------- the table


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def results_table(runs: list[Run]) -> str:
    """Our test top-1 beside the reference's, one pair of rows per model, in the reference's column order."""
    header = ["Model", *(b.title for b in BENCHMARKS), "Average"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for backbone in {r.backbone.key: r.backbone for r in runs}.values():
        ours = {r.benchmark.key: r.top1 for r in runs if r.backbone.key == backbone.key}
        scores = [ours.get(b.key) for b in BENCHMARKS]
        average = sum(scores) / len(scores) if None not in scores else None
        reference = [backbone.reference[b.key] for b in BENCHMARKS]
        rows = (
            (f"{backbone.title} (ours)", scores, average),
            (f"{backbone.title} (reference)", reference, backbone.reference_average),
        )
        for title, values, mean in rows:
            lines.append("| " + " | ".join([title, *map(_cell, values), _cell(mean)]) + " |")
    return "\n".join(lines)


def notes(runs: list[Run], model_override: str | None) -> list[str]:
    found = [f"- {r.backbone.title} / {r.benchmark.title}: {r.status}, {r.note}" for r in runs if r.note]
    if model_override:
        found.insert(0, f"- Every row was trained from {model_override} (--model_override), not the named model.")
    return found


# ------------------------------------------------------------------------------------------------------ the CLI


def parse_cli(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--data_root", type=Path, required=True, help="Folder holding the six unpacked datasets.")
    models, datasets = ",".join(b.key for b in BACKBONES), ",".join(b.key for b in BENCHMARKS)
    parser.add_argument("--models", default=models, help=f"Comma-separated, from {models} (default: all).")
    parser.add_argument("--datasets", default=datasets, help=f"Comma-separated, from {datasets} (default: all).")
    parser.add_argument("--output_dir", type=Path, default=Path("runs/fgvc"), help="Run folders, logs and results.")
    parser.add_argument(
        "--num_processes",
        type=int,
        default=None,
        help="Processes (GPUs) per run; each gets its share of the config's batch (the global batch) unless "
        "--per_device_train_batch_size is given. Default: every visible GPU, or 1.",
    )
    parser.add_argument("--dry_run", action="store_true", help="Print the commands and the table; train nothing.")
    parser.add_argument("--model_override", help="Train this model (folder or Hub id) in place of both models.")
    parser.add_argument("--max_steps", type=int, default=None, help="Stop every run after this many steps.")
    parser.add_argument("--resume", action="store_true", help="Continue runs from their latest checkpoint.")
    args, overrides = parser.parse_known_args(argv)
    overrides = [flag for flag in overrides if flag != "--"]
    if overrides and not overrides[0].startswith("--"):
        parser.error(f"unexpected argument {overrides[0]!r}")
    args.backbones = _select(parser, "--models", args.models, {b.key: b for b in BACKBONES})
    args.benchmarks = _select(parser, "--datasets", args.datasets, {b.key: b for b in BENCHMARKS})
    if args.num_processes is not None and args.num_processes < 1:
        parser.error(f"--num_processes must be positive, got {args.num_processes}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max_steps must be positive, got {args.max_steps}")
    return args, overrides


def _select(parser: argparse.ArgumentParser, flag: str, value: str, known: dict[str, Any]) -> list[Any]:
    keys = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in keys if k not in known]
    if unknown or not keys:
        parser.error(f"{flag}: unknown {', '.join(map(repr, unknown)) or 'empty list'}; choose from {', '.join(known)}")
    return [known[k] for k in dict.fromkeys(keys)]


def machine() -> dict[str, Any]:
    """The accelerators and library versions the runs used, for results.json."""
    import accelerate
    import peft
    import torch
    import transformers

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    versions = {m.__name__: m.__version__ for m in (torch, transformers, peft, accelerate)}
    return {"python": sys.version.split()[0], "gpus": gpus, **versions}


def default_num_processes() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def plan(args: argparse.Namespace, overrides: list[str]) -> list[Run]:
    """Every (model, dataset) cell with its command, checked by the training parser; missing datasets have none."""
    num_processes = args.num_processes or default_num_processes()
    runs = []
    for backbone in args.backbones:
        for benchmark in args.benchmarks:
            dataset_dir, why_not = find_dataset(args.data_root, benchmark)
            run = Run(backbone, benchmark, status="missing", note=why_not)
            runs.append(run)
            if dataset_dir is None:
                continue
            run.dataset_dir = str(dataset_dir)
            run_dir = args.output_dir / backbone.key / benchmark.key
            run.run_dir, run.log = str(run_dir), str(args.output_dir / "logs" / f"{backbone.key}-{benchmark.key}.log")
            run.command = train_command(
                load_config(backbone, benchmark),
                dataset_dir=dataset_dir,
                run_dir=run_dir,
                num_processes=num_processes,
                overrides=overrides,
                model_override=args.model_override,
                max_steps=args.max_steps,
                resume=args.resume,
            )
            check_command(run.command, f"{backbone.key} on {benchmark.key}")
            run.status = "dry_run"
    return runs


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_cli(argv)
    if not args.data_root.is_dir():
        raise SystemExit(f"--data_root {args.data_root} is not a folder.")
    runs = plan(args, overrides)
    planned = [r for r in runs if r.command]
    if not planned:
        print(f"No dataset found under {args.data_root}; the expected folders are listed in --help.", file=sys.stderr)
    for i, run in enumerate(planned, start=1):
        print(f"[{i}/{len(planned)}] {run.backbone.key} on {run.benchmark.key}: {shlex.join(run.command)}", flush=True)
        if args.dry_run:
            continue
        launch(run)
        outcome = f"test top-1 {run.top1:.2f}%" if run.top1 is not None else run.note
        print(f"[{i}/{len(planned)}] {run.status} in {run.seconds:.0f} s: {outcome} (log: {run.log})", flush=True)

    table = results_table(runs)
    footnotes = notes(runs, args.model_override)
    report = "\n".join([table, *([""] + footnotes if footnotes else [])])
    print("\nTest top-1 accuracy (%), LoRA:\n")
    print(report)
    if not args.dry_run:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "results.md").write_text(f"# LoRA, test top-1 accuracy (%)\n\n{report}\n", encoding="utf-8")
        summary = {
            "machine": machine(),
            "data_root": str(args.data_root),
            "model_override": args.model_override,
            "overrides": overrides,
            "table": table,
            "runs": [r.to_json() for r in runs],
        }
        (args.output_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"\nWritten to {args.output_dir / 'results.md'} and {args.output_dir / 'results.json'}")
    return 1 if not planned or any(r.status == "failed" for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
