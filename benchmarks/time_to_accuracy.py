"""Time to accuracy: training wall time until test top-1 first reaches a target, per recipe, on flowers12.

Every recipe is a ``peft-vision-lora train`` run of the shared ViT-S/14 (DINOv2 weights, ImageNet statistics) on
``../shared/data/flowers12`` (720 train / 240 test images, 12 classes), in its own subprocess. The test split is
evaluated every ``--eval_steps`` optimizer steps; the clock counts training only (evaluations are subtracted; a
linear probe's one-off feature caching is counted), so the time to target is the training time after which test
top-1 was first >= ``--target``. Recipes:

- ``default``: the package defaults (LoRA qkv r=8, alpha 16, lr 1e-3, cosine, 10% warmup, batch 16,
  random-resized-crop + flip, bf16 autocast where the CPU has bf16 units), at ``--image_size``;
- ``fp32`` / ``bf16``: the same with the precision forced (under bf16 autocast LoRA/head weights and AdamW stay
  fp32); on a CPU with bf16 units ``bf16`` is ``default``, so only ``fp32`` runs unless asked for;
- ``compile``: the same with ``torch.compile`` (Accelerate's dynamo backend ``inductor``);
- ``size-<N>``: the same at another image size (``--other_size``);
- ``peft-example``: the recipe of PEFT's image-classification example run through our script: LoRA r=16, alpha 16,
  dropout 0.1 on query and value, lr 5e-3, fp32, processor transforms only (no random crop, no flip);
- ``linear`` and ``full``: the linear probe (on cached features) and full fine-tuning baselines.

    python benchmarks/time_to_accuracy.py              # the table in RESULTS.md (about 30 minutes on 2 cores)
    python benchmarks/time_to_accuracy.py --quick      # tiny random ViT, tiny synthetic folder: a smoke run
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    FLOWERS12,
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

RECIPES = ("default", "fp32", "bf16", "compile", "size", "peft-example", "linear", "full")
QUICK_RECIPES = ("default", "linear")
PEFT_EXAMPLE_FLAGS = [
    "--preset", "qv", "--r", "16", "--lora_alpha", "16", "--lora_dropout", "0.1", "--learning_rate", "5e-3",
    "--min_crop_scale", "1", "--hflip", "0", "--bf16", "false",
]  # fmt: skip


# ------------------------------------------------------------------------------------------------------------ worker


def work(config: dict[str, Any]) -> dict[str, Any]:
    """Train one recipe; return its accuracy curve against training seconds and its throughput."""
    if config.get("compile"):
        # What ``accelerate launch --dynamo_backend inductor`` sets: Accelerator.prepare compiles the model.
        os.environ["ACCELERATE_DYNAMO_BACKEND"] = "INDUCTOR"
    from transformers.utils import logging as hf_logging

    from peft_vision_lora.training import parse_args
    from peft_vision_lora.training.loop import Trainer

    hf_logging.set_verbosity_error()

    class TimedTrainer(Trainer):
        """Records test top-1 at each evaluation against the training time so far (evaluation time excluded)."""

        def _fit(self) -> None:
            self.curve: list[dict[str, float]] = []
            self.eval_s, self.fit_started = 0.0, time.perf_counter()
            super()._fit()
            self.fit_s = time.perf_counter() - self.fit_started - self.eval_s

        def _evaluate(self, split: str) -> dict[str, Any]:
            started = time.perf_counter()
            metrics = super()._evaluate(split)
            if hasattr(self, "fit_started") and not hasattr(self, "fit_s"):
                train_s = started - self.fit_started - self.eval_s + self.features_runtime
                self.curve.append(
                    {"step": self.state.global_step, "train_s": train_s, "top1": metrics["top1_accuracy"]}
                )
            self.eval_s += time.perf_counter() - started
            return metrics

    with tempfile.TemporaryDirectory() as out:
        flags = [*config["flags"], "--output_dir", out, "--save_strategy", "no", "--disable_tqdm"]
        trainer = TimedTrainer(*parse_args(flags))
        results = trainer.train()
    images = trainer.total_steps * trainer.global_batch_size
    train_s = trainer.fit_s + trainer.features_runtime
    return {
        "curve": trainer.curve,
        "train_s": train_s,
        "images_per_s": images / train_s,
        "best_window_images_per_s": best_window_rate(trainer.curve, trainer.global_batch_size),
        "final_top1": results["test"]["top1_accuracy"],
        "mixed_precision": results["mixed_precision"],
        "total_steps": trainer.total_steps,
        "feature_cache_s": trainer.features_runtime,
    }


# ------------------------------------------------------------------------------------------------------------ driver


def best_window_rate(curve: list[dict[str, float]], batch_size: int) -> float | None:
    """Images/s of the fastest stretch between two evaluations: on a machine shared with other jobs, the closest
    estimate of the recipe's own speed (as ``timeit`` takes the best of its repeats)."""
    rates = [
        (later["step"] - earlier["step"]) * batch_size / (later["train_s"] - earlier["train_s"])
        for earlier, later in zip(curve, curve[1:])
        if later["train_s"] > earlier["train_s"]
    ]
    return max(rates, default=None)


def run_recipes(configs: list[dict[str, Any]], repeats: int, timeout: float) -> dict[str, list[dict[str, Any]]]:
    """Each recipe ``repeats`` times in A B A B order; a recipe that fails or times out is reported, not fatal
    (``torch.compile`` may be unusable or too slow on a CPU)."""
    results: dict[str, list[dict[str, Any]]] = {config["name"]: [] for config in configs}
    for repeat in range(repeats):
        for config in configs:
            started = time.perf_counter()
            try:
                result = run_child(Path(__file__), config, timeout=timeout)
            except subprocess.TimeoutExpired:
                result = {"error": f"did not finish within {timeout:.0f} s"}
            except RuntimeError as exc:
                result = {"error": str(exc).strip().splitlines()[-1][:300]}
            results[config["name"]].append(result)
            elapsed = time.perf_counter() - started
            print(f"[{repeat + 1}/{repeats}] {config['name']}: {elapsed:.1f}s", file=sys.stderr, flush=True)
    return results


def first_reaching(curve: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first evaluation whose top-1 reached ``target`` (its step and training seconds); None if none did."""
    return next((point for point in curve if point["top1"] >= target), None)


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


def recipes(args: Any, model: Path, data: Path) -> list[dict[str, Any]]:
    size = str(args.image_size)
    common = ["--model", str(model), "--dataset", str(data), "--normalization", "imagenet"]
    common += ["--num_train_epochs", str(args.epochs), "--eval_steps", str(args.eval_steps), "--seed", "0"]
    flags = {
        "default": ["--image_size", size],
        "fp32": ["--image_size", size, "--bf16", "false"],
        "bf16": ["--image_size", size, "--bf16", "true"],
        "compile": ["--image_size", size],
        "size": ["--image_size", str(args.other_size)],
        "peft-example": ["--image_size", size, *PEFT_EXAMPLE_FLAGS],
        "linear": ["--image_size", size, "--method", "linear"],
        "full": ["--image_size", size, "--method", "full"],
    }
    names = {"size": f"size-{args.other_size}"}
    return [
        {
            "name": names.get(recipe, recipe),
            "recipe": recipe,
            "flags": common + flags[recipe],
            "compile": recipe == "compile",
            "image_size": args.other_size if recipe == "size" else args.image_size,
            "threads": args.threads,
        }
        for recipe in args.recipes
    ]


def main() -> None:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=None, help="default: all; --quick: a few")
    parser.add_argument("--image_size", type=int, default=None, help="image size of every recipe but 'size'")
    parser.add_argument("--other_size", type=int, default=None, help="image size of the 'size' recipe")
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--eval_steps", type=int, default=None, help="evaluate the test split every N steps")
    parser.add_argument("--target", type=float, default=None, help="test top-1 to reach")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one recipe")
    args = parser.parse_args()
    # Quick: 48 train images at batch 16 = 3 steps per epoch; the colours are learnt in a few steps.
    defaults = {"image_size": 112, "other_size": 224, "epochs": 3, "eval_steps": 15, "target": 0.95}
    quick = {"image_size": 32, "other_size": 16, "epochs": 2, "eval_steps": 3, "target": 0.9}
    for key, value in (quick if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.recipes and args.quick:
        args.recipes = list(QUICK_RECIPES)
    elif not args.recipes:
        import torch

        from peft_vision_lora.training.precision import native_bf16

        # The forced precision that equals the default would run the same recipe twice.
        same_as_default = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
        args.recipes = [recipe for recipe in RECIPES if recipe != same_as_default]
    repeats = args.repeats or 1

    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            model, data = make_quick_assets(Path(tmp))
        elif (SHARED_VIT / "model.safetensors").is_file() and FLOWERS12.is_dir():
            model, data = SHARED_VIT, FLOWERS12
        else:
            parser.error(f"{SHARED_VIT} or {FLOWERS12} not found: ../shared is needed (or run with --quick).")
        configs = recipes(args, model, data)
        results = run_recipes(configs, repeats, args.timeout)

    rows, table = [], []
    for config in configs:
        runs = results[config["name"]]
        failed = next((run["error"] for run in runs if "error" in run), None)
        if failed:
            rows.append({"name": config["name"], "recipe": config["recipe"], "flags": config["flags"], "error": failed})
            table.append([config["name"], config["image_size"], "", f"failed: {failed}", "", "", "", "", ""])
            continue
        firsts = [first_reaching(run["curve"], args.target) for run in runs]
        reached = sorted((point["train_s"], point["step"]) for point in firsts if point is not None)
        middle = reached[len(reached) // 2] if len(reached) == len(runs) else (None, None)
        row = {
            "name": config["name"],
            "recipe": config["recipe"],
            "image_size": config["image_size"],
            "mixed_precision": runs[0]["mixed_precision"],
            "flags": config["flags"],
            "time_to_target_s": middle[0],
            "steps_to_target": middle[1],
            "final_top1": sorted(run["final_top1"] for run in runs)[len(runs) // 2],
            "train_s": sorted(run["train_s"] for run in runs)[len(runs) // 2],
            "images_per_s": sorted(run["images_per_s"] for run in runs)[len(runs) // 2],
            "best_window_images_per_s": max(run["best_window_images_per_s"] or 0 for run in runs) or None,
            "curve": runs[0]["curve"],
        }
        rows.append(row)
        first = row["time_to_target_s"]
        table.append(
            [
                config["name"],
                config["image_size"],
                row["mixed_precision"],
                f"{first:.0f} (step {row['steps_to_target']})" if first is not None else "not reached",
                f"{row['final_top1']:.3f}",
                f"{row['train_s']:.0f}",
                f"{row['images_per_s']:.1f}",
                f"{row['best_window_images_per_s']:.1f}" if row["best_window_images_per_s"] else "-",
                " ".join(f"{point['top1']:.2f}" for point in row["curve"]),
            ]
        )

    info = machine_info(args.threads)
    print(format_machine(info))
    print(
        f"{'tiny random ViT, synthetic 3-class folder' if args.quick else 'ViT-S/14 (DINOv2) on flowers12'}; "
        f"{args.epochs:g} epochs, batch 16, test top-1 every {args.eval_steps} steps; target top-1 {args.target}; "
        f"{repeats} run(s) per recipe, median. Times are training seconds, evaluation excluded.\n"
    )
    headers = [
        "recipe",
        "px",
        "precision",
        f"s to {args.target:.0%}",
        "final top-1",
        "train s",
        "img/s",
        "best img/s",
        "test top-1 curve",
    ]
    print(markdown_table(headers, table))
    payload = {"benchmark": "time_to_accuracy", "machine": info, "target": args.target, "rows": rows}
    write_json(args.json, payload | {"runs": results})


if __name__ == "__main__" and not child_main(work):
    main()
