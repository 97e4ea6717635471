"""Time to accuracy as a matrix: datasets x recipes x seeds, each run a ``peft-vision-lora train`` in its own process.

Datasets (all at ``--image_size``, 112 px by default, the CPU recipe):

- ``flowers12``: ``../shared/data/flowers12``, 720 train / 240 test photos of 12 species;
- ``cifar10-1k``: the first 100 / next 100 files (by name) per class of the CIFAR-10 test split in ``../shared``,
  built by ``../shared/scripts/make_cifar10_1k.py`` (1,000 / 1,000 images of 32 px);
- ``fashion-mnist-1k``: 100 train / 100 test images per class of Debian's ``dataset-fashion-mnist`` (28 px), the
  subset the offline main job draws from (seed 0).

Recipes, all LoRA on the shared ViT-S/14 (DINOv2 weights) through our loop:

- ``previous``: the defaults before token dropout and the recipe work (qkv r=8, lr 1e-3, batch 16, 3 epochs, crop
  scale 0.08-1, random head, every token, every layer);
- ``default``: today's defaults (no flags);
- ``stock``: transformers' image-classification example with the PEFT notebook's LoRA: r=16, alpha 16, dropout 0.1
  on query and value, lr 5e-3, no random crop or flip, fp32, 3 epochs of batch 16;
- ``hand-loop``: the settings of a plain 60-line loop: qkv r=8, AdamW lr 2e-3 (warmup + cosine), batch 32, crop
  scale 0.35-1, fp32, 3 epochs;
- on request, the default with one option changed: ``every-token`` (no token dropout), ``progressive`` (56, 84 then
  112 px), ``last-6-layers`` (``--lora_layers 6``), ``label-smoothing`` (0.1).

The test split is evaluated ``--evaluations`` times per run (4); the clock counts training only (``train_s`` of the
run's log: evaluations excluded, LP-FT head fitting included). Reported per dataset and recipe over the seeds: mean
+- std test top-1, seconds to 90% and 95% of the best mean final top-1 of that dataset (first evaluation at or above it;
"-" if a seed never got there), training seconds, whole-run seconds (process start to saved folder, the
intermediate evaluations left out), img/s, the fraction of training time spent waiting for data.

Defaults were *chosen* on validation splits carved from train (``--val_fraction``); this benchmark reports test.

    python benchmarks/time_to_accuracy.py                      # the table in RESULTS.md (about 90 min on 2 cores)
    python benchmarks/time_to_accuracy.py --datasets cifar10-1k --recipes default hand-loop --seeds 0
    python benchmarks/time_to_accuracy.py --quick              # tiny random ViT, tiny synthetic folder: a smoke run
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    FLOWERS12,
    SHARED,
    SHARED_VIT,
    child_main,
    common_parser,
    format_machine,
    machine_info,
    make_random_vit,
    markdown_table,
    run_child,
    write_json,
)

DATASETS = ("flowers12", "cifar10-1k", "fashion-mnist-1k")
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


# ------------------------------------------------------------------------------------------------------------ worker


def work(config: dict[str, Any]) -> dict[str, Any]:
    """Train one (dataset, recipe, seed); return its test top-1 curve against training seconds and its timings."""
    started = time.perf_counter()
    from transformers.utils import logging as hf_logging

    from peft_vision_lora.training import parse_args
    from peft_vision_lora.training.loop import Trainer

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as out:
        flags = [*config["flags"], "--output_dir", out, "--save_strategy", "no", "--disable_tqdm"]
        # Evaluate this many times whatever the run's length (known only once the data is loaded): a fraction.
        trainer = Trainer(*parse_args([*flags, "--eval_steps", repr(1 / config["evaluations"])]))
        results = trainer.train()
    wall_s = time.perf_counter() - started
    curve = [
        {"step": e["step"], "train_s": e["train_s"], "top1": e["eval_top1_accuracy"]}
        for e in trainer.state.log_history
        if "eval_top1_accuracy" in e
    ]
    images = trainer.total_steps * trainer.global_batch_size
    train = results["train"]
    return {
        "curve": curve,
        "final_top1": results["test"]["top1_accuracy"],
        "train_s": train["train_s"],
        # The whole run as a user would time it, less the intermediate evaluations this benchmark adds.
        "run_s": wall_s - (trainer.eval_s - trainer.last_eval_s),
        "images_per_s": images / train["train_s"],
        "data_wait_fraction": train["data_wait_fraction"],
        "mixed_precision": results["mixed_precision"],
        "total_steps": trainer.total_steps,
        "global_batch_size": trainer.global_batch_size,
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
        else:
            data.save_to_disk(root / "fashion-mnist-1k")
            paths["fashion-mnist-1k"] = root / "fashion-mnist-1k"
    return paths


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
        row[key] = statistics.fmean(run[key] for run in runs)
    row["mixed_precision"] = runs[0]["mixed_precision"]
    row["total_steps"] = runs[0]["total_steps"]
    return row


def main() -> None:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPE_FLAGS), default=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--evaluations", type=int, default=4, help="test evaluations per run, the last at the end")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one run")
    args = parser.parse_args()
    if args.evaluations < 2:  # passed as the fraction --eval_steps 1/N, which must be below 1
        parser.error("--evaluations must be at least 2 (the last one is at the end of the run)")

    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            model, data = make_quick_assets(Path(tmp))
            datasets, args.seeds, args.image_size = {"synthetic": data}, args.seeds[:1], 32
            extra = ["--num_train_epochs", "2", "--min_steps", "0"]  # 48 images: 6 steps of 16 (hand-loop: 4 of 32)
        elif (SHARED_VIT / "model.safetensors").is_file():
            model, datasets, extra = SHARED_VIT, prepare_datasets(args.datasets, Path(tmp)), []
        else:
            parser.error(f"{SHARED_VIT} not found: ../shared is needed (or run with --quick).")
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {r: [] for r in args.recipes} for name in datasets}
        # Seeds outermost, recipes innermost: a slow drift of a shared machine hits every recipe alike.
        for seed in args.seeds:
            for name, path in datasets.items():
                for recipe in args.recipes:
                    flags = ["--model", str(model), "--dataset", str(path), "--normalization", "imagenet"]
                    flags += ["--image_size", str(args.image_size), "--seed", str(seed), *RECIPE_FLAGS[recipe], *extra]
                    config = {"name": f"{name}/{recipe}/{seed}", "flags": flags, "threads": args.threads}
                    config["evaluations"] = args.evaluations
                    started = time.perf_counter()
                    try:
                        result = run_child(Path(__file__), config, timeout=args.timeout)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        result = {"error": str(exc).strip().splitlines()[-1][:300]}
                    runs[name][recipe].append(result)
                    top1 = result.get("final_top1")
                    print(
                        f"{config['name']}: {time.perf_counter() - started:.0f}s, top-1 {top1}",
                        file=sys.stderr,
                        flush=True,
                    )

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
                    f"{100 * row['data_wait_fraction']:.1f}%",
                    f"{row['mixed_precision']}, {row['total_steps']} steps",
                ]
            )
    info = machine_info(args.threads)
    print(format_machine(info))
    print(
        f"ViT-S/14 (DINOv2) LoRA at {args.image_size} px; seeds {args.seeds}; test top-1 evaluated "
        f"{args.evaluations} times per run; seconds are training seconds (evaluation excluded) unless 'run s'.\n"
    )
    headers = ["dataset", "recipe", "test top-1 %", "s to 90%", "s to 95%", "train s", "run s", "img/s", "data wait"]
    print(markdown_table([*headers, "precision"], table))
    write_json(args.json, {"benchmark": "time_to_accuracy", "machine": info, "rows": rows, "runs": runs})


if __name__ == "__main__" and not child_main(work):
    main()
