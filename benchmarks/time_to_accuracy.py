"""Time to accuracy as a matrix: datasets x recipes x seeds, each run the whole command a user waits for.

Datasets (all at ``--image_size``, 112 px by default, the CPU recipe):

- ``flowers12``: ``../shared/data/flowers12``, 720 train / 240 test photos of 12 species;
- ``cifar10-1k``: the first 100 / next 100 files (by name) per class of the CIFAR-10 test split in ``../shared``,
  built by ``../shared/scripts/make_cifar10_1k.py`` (1,000 / 1,000 images of 32 px);
- ``fashion-mnist-1k``: 100 train / 100 test images per class of Debian's ``dataset-fashion-mnist`` (28 px), the
  subset the offline main job draws from (seed 0), written as a PNG image folder (the hand loop reads folders);
- ``two-class-640`` (on request): the shape of a small user set, a few hundred large photos of 2 classes at the
  default 224 px: flowers12's dandelion + colts-foot ("composite") against buttercup, 180 train / 60 validation
  photos upscaled to 640 px JPEG (so decoding costs what a large photo costs). It has a validation split and no
  test split: its top-1 is the validation split's, of the weights the run selected on it.

Recipes, all LoRA on the shared ViT-S/14 (DINOv2 weights):

- through our loop, as ``python -m peft_vision_lora.cli train ...``: ``default`` (no flags); ``previous`` (the
  defaults before the recipe work: lr 1e-3, batch 16, 3 epochs, crop 0.08-1, random head, every token); ``stock``
  (transformers' example with the PEFT notebook's LoRA: r=16 on query/value, lr 5e-3, no crop or flip, fp32, 3
  epochs of 16); ``hand-loop`` (a hand loop's settings: lr 2e-3, batch 32, crop 0.35-1, fp32, 3 epochs, every
  token, random head); on request the default with one option changed (``every-token``, ``progressive``,
  ``last-6-layers``, ``label-smoothing``);
- ``stock-loop``, ``stock-loop-N``: ``benchmarks/hand_loop.py``, stock transformers + PEFT in a plain loop (qkv r=8,
  AdamW 2e-3 one-cycle, batch 32, fp32, every token), 3 or N epochs, evaluating the test split after each epoch;
- ``budget=RECIPE`` / ``budget=Nx:RECIPE``: the default with ``--time_budget`` set to (N times) the whole-command
  seconds of RECIPE's run on the same dataset and seed (list RECIPE first), e.g. ``budget=stock-loop-4``: what the
  package reaches in the time the hand loop takes for 4 epochs; ``budget=2x:default``: twice the default's time.

``run s`` is the wall time of the whole command (process start to exit: imports, data, model, training,
evaluations, outputs), measured by this driver around the subprocess; our loop's runs evaluate the test split once,
at the end, as the plain command does (``--evaluations N`` adds N-1 evaluations for the s-to-90% columns and leaves
their seconds out of ``run s``). ``train s`` leaves evaluations out; LP-FT head fitting is in it. Ratios of ``run s``
compare like with like only at the same precision: ``--bf16 false`` for fp32 on both sides (what a CPU without bf16
units runs). The machine line names the CPU and its bf16 flags.

Defaults were *chosen* on validation splits carved from train (``--val_fraction``); this benchmark reports test.

    python benchmarks/time_to_accuracy.py --datasets cifar10-1k --recipes default stock-loop --seeds 0 --bf16 false
    python benchmarks/time_to_accuracy.py --recipes stock-loop-4 budget=stock-loop-4 --bf16 false
    python benchmarks/time_to_accuracy.py --quick              # tiny random ViT, tiny synthetic folder: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    FLOWERS12,
    REPO,
    SHARED,
    SHARED_VIT,
    common_parser,
    format_machine,
    machine_info,
    make_random_vit,
    markdown_table,
    write_json,
)

DATASETS = ("flowers12", "cifar10-1k", "fashion-mnist-1k")
EXTRA_DATASETS = ("two-class-640",)
# Datasets with a size of their own (the user's shape they stand for), whatever --image_size says.
IMAGE_SIZES = {"two-class-640": 224}
TWO_CLASS_GROUPS = {"composite": ("dandelion", "colts-foot"), "buttercup": ("buttercup",)}
RECIPES = ("previous", "default", "stock", "hand-loop")
# Speed options that are not defaults, measured against the default on request (--recipes ...).
VARIANTS = {
    "every-token": ["--token_keep", "1"],
    "progressive": ["--resolution_schedule", "56", "84", "112"],
    "last-6-layers": ["--lora_layers", "6"],
    "label-smoothing": ["--label_smoothing", "0.1"],
}
# Every option whose default changed since, pinned to its old value.
PREVIOUS_FLAGS = [
    "--min_crop_scale", "0.08", "--per_device_train_batch_size", "16", "--learning_rate", "1e-3",
    "--num_train_epochs", "3", "--min_steps", "0", "--token_keep", "1", "--head_init", "random",
    "--ema_decay", "0",
]  # fmt: skip
STOCK_FLAGS = [
    "--preset", "qv", "--r", "16", "--lora_alpha", "16", "--lora_dropout", "0.1", "--learning_rate", "5e-3",
    "--per_device_train_batch_size", "16", "--num_train_epochs", "3", "--min_crop_scale", "1", "--hflip", "0",
    "--bf16", "false", "--min_steps", "0", "--token_keep", "1", "--head_init", "random", "--ema_decay", "0",
]  # fmt: skip
HAND_LOOP_FLAGS = [
    "--learning_rate", "2e-3", "--per_device_train_batch_size", "32", "--min_crop_scale", "0.35",
    "--num_train_epochs", "3", "--bf16", "false", "--min_steps", "0", "--token_keep", "1", "--head_init", "random",
    "--ema_decay", "0",
]  # fmt: skip
RECIPE_FLAGS = {
    "previous": PREVIOUS_FLAGS,
    "default": [],
    "stock": STOCK_FLAGS,
    "hand-loop": HAND_LOOP_FLAGS,
    **VARIANTS,
}


# ------------------------------------------------------------------------------------------------------------ runs

HAND_LOOP = Path(__file__).resolve().parent / "hand_loop.py"


def hand_loop_epochs(recipe: str) -> int | None:
    """3 for ``stock-loop``, N for ``stock-loop-N``, None for any other recipe."""
    if recipe == "stock-loop":
        return 3
    prefix = "stock-loop-"
    return int(recipe[len(prefix) :]) if recipe.startswith(prefix) and recipe[len(prefix) :].isdigit() else None


def timed(command: list[str], threads: int, timeout: float) -> float:
    """Seconds of ``command`` from spawn to exit, as a user waits for it."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-2000:] or f"exit {proc.returncode}")
    return seconds


def run_ours(flags: list[str], out: Path, *, evaluations: int, threads: int, timeout: float) -> dict[str, Any]:
    """One ``peft-vision-lora train`` command; its top-1 curve, timings and phases."""
    extra = ["--eval_steps", repr(1 / evaluations)] if evaluations > 1 else []
    command = [sys.executable, "-m", "peft_vision_lora.cli", "train", *flags, *extra]
    wall_s = timed([*command, "--output_dir", str(out), "--save_strategy", "no", "--disable_tqdm"], threads, timeout)
    results = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [e for e in log if "eval_top1_accuracy" in e]
    curve = [{"step": e["step"], "train_s": e["train_s"], "top1": e["eval_top1_accuracy"]} for e in evals]
    train = results["train"]
    return {
        "curve": curve,
        "final_top1": (results.get("test") or results["eval"])["top1_accuracy"],
        "train_s": train["train_s"],
        # The whole command, less the evaluations this benchmark added (the final one is the command's own).
        "run_s": wall_s - sum(e["eval_s"] for e in evals[:-1]) if extra else wall_s,
        "phases": results["phases"],
        "images_per_s": results["total_steps"] * results["global_train_batch_size"] / train["train_s"],
        "data_wait_fraction": train["data_wait_fraction"],
        "mixed_precision": results["mixed_precision"],
        "total_steps": results["total_steps"],
        "global_batch_size": results["global_train_batch_size"],
        "time_budget": results.get("time_budget"),
    }


def run_hand_loop(flags: list[str], out: Path, *, epochs: int, threads: int, timeout: float) -> dict[str, Any]:
    """One ``hand_loop.py`` command (it evaluates the test split after every epoch, as such loops do)."""
    keep = {"--model", "--dataset", "--image_size", "--seed"}
    own = [x for i in range(0, len(flags), 2) if flags[i] in keep for x in flags[i : i + 2]]
    command = [sys.executable, str(HAND_LOOP), *own, "--epochs", str(epochs), "--output_dir", str(out)]
    wall_s = timed(command, threads, timeout)
    summary = json.loads((out / "log.json").read_text())
    log = summary["log"]
    steps_per_epoch = summary["total_steps"] // epochs
    return {
        "curve": [{"step": e["epoch"] * steps_per_epoch, "train_s": e["train_s"], "top1": e["test_top1"]} for e in log],
        "final_top1": log[-1]["test_top1"],
        "train_s": log[-1]["train_s"],
        "run_s": wall_s,
        "images_per_s": summary["total_steps"] * summary["global_batch_size"] / log[-1]["train_s"],
        "data_wait_fraction": None,  # not measured by a hand loop
        "mixed_precision": "no",
        "total_steps": summary["total_steps"],
        "global_batch_size": summary["global_batch_size"],
    }


# ------------------------------------------------------------------------------------------------------------ driver


def prepare_datasets(names: list[str], root: Path) -> dict[str, Path]:
    """Local copies of the benchmark datasets; a dataset that cannot be built here is left out with a message."""
    paths: dict[str, Path] = {}
    if "flowers12" in names:
        paths["flowers12"] = FLOWERS12
    if "cifar10-1k" in names:
        out = root / "cifar10-1k"
        script, tar = SHARED / "scripts" / "make_cifar10_1k.py", SHARED / "data" / "cifar10-test-jpg.tar"
        subprocess.run([sys.executable, str(script), str(tar), str(out)], check=True, capture_output=True)
        paths["cifar10-1k"] = out
    if "fashion-mnist-1k" in names:
        from peft_vision_lora.offline.fashion_mnist import load_fashion_mnist

        try:
            data = load_fashion_mnist(per_class_train=100, per_class_test=100, seed=0)
        except FileNotFoundError as exc:
            print(f"fashion-mnist-1k left out: {exc}", file=sys.stderr)
        else:  # an image folder, which the stock hand loop reads too
            paths["fashion-mnist-1k"] = write_image_folder(data, root / "fashion-mnist-1k")
    if "two-class-640" in names:
        paths["two-class-640"] = make_two_class_640(root / "two-class-640")
    return paths


def write_image_folder(data: Any, out: Path) -> Path:
    """``out/<split>/<class>/<n>.png`` from a DatasetDict with image and label columns ("/" in a class name: "-")."""
    names = data["train"].features["label"].names
    for split, rows in data.items():
        for n, row in enumerate(rows):
            folder = out / split / names[row["label"]].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            row["image"].save(folder / f"{n:05d}.png")
    return out


def make_two_class_640(out: Path) -> Path:
    """flowers12's composites against buttercups, upscaled to 640 px JPEG: train from its train split, validation
    from its test split."""
    import PIL.Image

    for split, target in (("train", "train"), ("test", "validation")):
        for label, species in TWO_CLASS_GROUPS.items():
            folder = out / target / label
            folder.mkdir(parents=True)
            for name in species:
                for path in sorted((FLOWERS12 / split / name).glob("*.jpg")):
                    with PIL.Image.open(path) as image:
                        big = image.convert("RGB").resize((640, 640), PIL.Image.Resampling.BICUBIC)
                    big.save(folder / f"{name}-{path.stem}.jpg", quality=92)
    return out


def make_quick_assets(root: Path) -> tuple[Path, Path]:
    """A tiny random ViT and a 3-class synthetic image folder whose mean colour gives the class away."""
    import numpy as np
    import PIL.Image

    make_random_vit(root / "vit", quick=True)
    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    for split, count in (("train", 16), ("test", 4)):
        for name, colour in colours.items():
            folder = root / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
                PIL.Image.fromarray(pixels).save(folder / f"{i}.png")
    return root / "vit", root / "data"


def first_reaching(curve: list[dict[str, float]], target: float) -> float | None:
    """Training seconds at the first evaluation whose top-1 reached ``target``; None if none did."""
    return next((point["train_s"] for point in curve if point["top1"] >= target), None)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict[str, Any]], best: float) -> dict[str, Any]:
    top1 = [run["final_top1"] for run in runs]
    row: dict[str, Any] = {"top1_mean": mean_std(top1)[0], "top1_std": mean_std(top1)[1], "seeds": len(runs)}
    for fraction in (0.9, 0.95):
        reached = [first_reaching(run["curve"], fraction * best) for run in runs]
        row[f"s_to_{round(fraction * 100)}"] = None if None in reached else statistics.fmean(reached)
    for key in ("train_s", "run_s", "images_per_s", "data_wait_fraction"):
        values = [run[key] for run in runs]
        row[key] = None if None in values else statistics.fmean(values)
    row["mixed_precision"] = runs[0]["mixed_precision"]
    row["total_steps"] = runs[0]["total_steps"]
    return row


def budget_target(recipe: str) -> tuple[str, float]:
    """``budget=2x:default`` -> ("default", 2.0); a recipe that is no budget -> (itself, 1.0)."""
    if not recipe.startswith("budget="):
        return recipe, 1.0
    times, _, target = recipe.removeprefix("budget=").rpartition(":")
    return target, float(times.removesuffix("x")) if times else 1.0


def check_recipe(recipe: str) -> str:
    """argparse type of ``--recipes``: a known recipe, ``stock-loop[-N]`` or ``budget=[Nx:]RECIPE``."""
    base = budget_target(recipe)[0]
    if base in RECIPE_FLAGS or hand_loop_epochs(base):
        return recipe
    raise argparse.ArgumentTypeError(f"unknown recipe {recipe!r}: {', '.join(RECIPE_FLAGS)}, stock-loop[-N], budget=R")


def main() -> None:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS + EXTRA_DATASETS, default=list(DATASETS))
    parser.add_argument("--recipes", nargs="+", type=check_recipe, default=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--bf16", choices=("auto", "true", "false"), default="auto", help="our runs' --bf16")
    parser.add_argument("--evaluations", type=int, default=1, help="test evaluations per run of ours (1: at the end)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one run")
    args = parser.parse_args()
    for recipe in args.recipes:
        target = budget_target(recipe)[0]
        if recipe != target and (target not in args.recipes or args.recipes.index(target) > args.recipes.index(recipe)):
            parser.error(f"{recipe} needs {target} listed before it")

    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            model, data = make_quick_assets(Path(tmp))
            datasets, args.seeds, args.image_size = {"synthetic": data}, args.seeds[:1], 32
            extra = ["--num_train_epochs", "4", "--min_steps", "0"]  # 48 images: 6 steps of 32
        elif (SHARED_VIT / "model.safetensors").is_file():
            model, datasets, extra = SHARED_VIT, prepare_datasets(args.datasets, Path(tmp)), []
        else:
            parser.error(f"{SHARED_VIT} not found: ../shared is needed (or run with --quick).")
        extra += [] if args.bf16 == "auto" else ["--bf16", args.bf16]
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {r: [] for r in args.recipes} for name in datasets}
        # Seeds outermost, recipes innermost: a slow drift of a shared machine hits every recipe alike.
        for seed, (name, path) in ((seed, item) for seed in args.seeds for item in datasets.items()):
            for number, recipe in enumerate(args.recipes):
                flags = ["--model", str(model), "--dataset", str(path), "--normalization", "imagenet"]
                flags += ["--image_size", str(IMAGE_SIZES.get(name, args.image_size)), "--seed", str(seed)]
                out, limits = (
                    Path(tmp) / f"run-{name}-{seed}-{number}",
                    {"threads": args.threads, "timeout": args.timeout},
                )
                started = time.perf_counter()
                try:
                    if hand_loop_epochs(recipe):
                        result = run_hand_loop(flags, out, epochs=hand_loop_epochs(recipe), **limits)
                    else:
                        target, times = budget_target(recipe)
                        seconds = times * runs[name][target][-1]["run_s"] if target != recipe else 0
                        budget = ["--time_budget", f"{seconds:.0f}"] if seconds else []
                        flags += [*RECIPE_FLAGS[target if not budget else "default"], *extra, *budget]
                        result = run_ours(flags, out, evaluations=args.evaluations, **limits)
                except (RuntimeError, KeyError, subprocess.TimeoutExpired) as exc:
                    result = {"error": str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else repr(exc)}
                runs[name][recipe].append(result)
                top1 = result.get("final_top1")
                print(f"{name}/{recipe}/{seed}: {time.perf_counter() - started:.0f}s, top-1 {top1}", file=sys.stderr)

    rows, table = [], []
    for name, by_recipe in runs.items():
        finished = {r: [run for run in rs if "error" not in run] for r, rs in by_recipe.items()}
        best = max((mean_std([run["final_top1"] for run in rs])[0] for rs in finished.values() if rs), default=0)
        for recipe, recipe_runs in by_recipe.items():
            errors = [run["error"] for run in recipe_runs if "error" in run]
            if errors:
                rows.append({"dataset": name, "recipe": recipe, "error": errors[0]})
                table.append([name, recipe, f"failed: {errors[0]}", *[""] * 7])
                continue
            row = {"dataset": name, "recipe": recipe, **summarise(recipe_runs, best)}
            rows.append(row)
            seconds = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
            table.append(
                [
                    name,
                    recipe,
                    f"{100 * row['top1_mean']:.1f} ± {100 * row['top1_std']:.1f}",
                    seconds(row["s_to_90"]),
                    seconds(row["s_to_95"]),
                    f"{row['train_s']:.0f}",
                    f"{row['run_s']:.0f}",
                    f"{row['images_per_s']:.1f}",
                    "-" if row["data_wait_fraction"] is None else f"{100 * row['data_wait_fraction']:.1f}%",
                    f"{row['mixed_precision']}, {row['total_steps']} steps",
                ]
            )
    info = machine_info(args.threads)
    print(format_machine(info))
    print(
        f"ViT-S/14 (DINOv2) LoRA at {args.image_size} px; seeds {args.seeds}; our runs evaluate the test split "
        f"{args.evaluations} time(s); 'run s' is the whole command, 'train s' leaves evaluations out.\n"
    )
    headers = ["dataset", "recipe", "test top-1 %", "s to 90%", "s to 95%", "train s", "run s", "img/s", "data wait"]
    print(markdown_table([*headers, "precision"], table))
    write_json(args.json, {"benchmark": "time_to_accuracy", "machine": info, "rows": rows, "runs": runs})


if __name__ == "__main__":
    main()
