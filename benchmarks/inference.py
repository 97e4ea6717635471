"""Inference throughput and serving memory: base, LoRA unmerged and merged, the pipeline, 4 adapters on 1 backbone.

At batch 8, 224 px (``--batch-size``, ``--image-size``), on the shared ViT-S/14 and on ViT-B/16 geometry with random
weights (``--models`` picks):

- images/s of the base classifier, the LoRA model unmerged (``load_model``) and merged (``load_model(merge=True)``);
- ``pipeline("image-classification", model=<adapter folder>)`` on 8 PIL images end to end against a bare forward of
  the same model on the same, already preprocessed, batch (both timed in one worker, interleaved);
- the LoRA model as a training run evaluates it: unmerged against inside ``merged_adapters``, in turns in one worker;
- peak memory of one ``MultiAdapterClassifier`` serving 4 adapters against 4 merged models in one process;
- one mixed batch (a quarter of the images for each of 4 adapters, one forward) against 4 single-adapter batches of
  the same images on the same ``MultiAdapterClassifier``: time, peak RSS and tensor peak.

Every configuration runs in its own subprocess, in A B A B order; see ``_harness``.

    python benchmarks/inference.py                   # about 15 minutes on 2 cores
    python benchmarks/inference.py --quick           # tiny random model: a smoke run
"""

from __future__ import annotations

import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from _harness import (
    FLOWERS12,
    SHARED_VIT,
    alternate,
    child_main,
    common_parser,
    current_rss_mb,
    format_machine,
    machine_info,
    make_random_vit,
    markdown_table,
    peak_rss_mb,
    per_run_median,
    reset_peak_rss,
    scalar_stat,
    tensor_peak_mb,
    time_calls,
    verdict,
    write_json,
)

NUM_ADAPTERS = 4
NUM_LABELS = 12
TARGET_MERGED = 1.02
TARGET_PIPELINE_OVERHEAD = 0.10
FORWARD_VARIANTS = ("base", "lora-unmerged", "lora-merged")
SERVING_VARIANTS = ("multi-adapter", "merged-models")
MIXED_VARIANTS = ("mixed-batch", "single-adapter-batches")
KINDS = ("forward", "paired", "evaluation", "pipeline", "serving", "mixed")
# Paired kinds: the two timings' keys and their table rows (the second is the one the ratio puts on top).
PAIRED = {
    "paired": (("base_s", "merged_s"), ("base (paired)", "lora-merged (paired)")),
    "evaluation": (("unmerged_s", "merged_s"), ("lora-unmerged (paired)", "lora merged in place (paired)")),
}


# ------------------------------------------------------------------------------------------------------------ worker


def load_images(count: int, size: int) -> list:
    """``count`` real flower photos where ../shared has them, else random images, as RGB PIL images of ``size``."""
    import numpy as np
    from PIL import Image

    # Every 20th test photo is one per class: a batch of different flowers.
    paths = sorted((FLOWERS12 / "test").glob("*/*.jpg"))[::20][:count] if FLOWERS12.is_dir() else []
    if len(paths) == count:
        return [Image.open(path).convert("RGB").resize((size, size)) for path in paths]
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def load_base(config: dict[str, Any]):
    """The base classifier with a fresh head of the adapters' label count, in eval mode."""
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(
        config["model_path"], num_labels=NUM_LABELS, ignore_mismatched_sizes=True
    ).eval()


def forward_work(config: dict[str, Any]) -> dict[str, Any]:
    import torch

    import peft_vision_lora as pvl
    from peft_vision_lora.training.model import forward_kwargs

    variant = config["variant"]
    if variant == "base":
        model = load_base(config)
    else:
        model = pvl.load_model(config["adapters"][0], merge=variant == "lora-merged")
    size = config["image_size"]
    pixel_values = torch.randn(config["batch_size"], 3, size, size)
    kwargs = forward_kwargs(model, size)  # another size than the checkpoint's: every variant resamples alike
    load_peak = reset_peak_rss()
    with torch.inference_mode():
        times = time_calls(lambda: model(pixel_values=pixel_values, **kwargs), config["warmup"], config["batches"])
    return {"batch_s": times, "load_peak_rss_mb": load_peak, "setup_rss_mb": current_rss_mb()}


def paired_work(config: dict[str, Any]) -> dict[str, Any]:
    """Two models in one worker, timed in turns: a merge's cost without worker-to-worker drift. ``paired``: the base
    classifier against the merged adapter; ``evaluation``: the LoRA model as a run holds it, plain against inside
    ``merged_adapters`` (how a run's evaluations and LP-FT pass call it)."""
    import torch

    import peft_vision_lora as pvl
    from peft_vision_lora.training.model import forward_kwargs, merged_adapters

    size = config["image_size"]
    pixel_values = torch.randn(config["batch_size"], 3, size, size)
    if config["kind"] == "paired":
        base, merged = load_base(config), pvl.load_model(config["adapters"][0], merge=True)
        first = partial(base, pixel_values=pixel_values, **forward_kwargs(base, size))
        second = partial(merged, pixel_values=pixel_values, **forward_kwargs(merged, size))
    else:
        model = pvl.load_model(config["adapters"][0])
        first = partial(model, pixel_values=pixel_values, **forward_kwargs(model, size))

        def second() -> None:
            with merged_adapters(model):
                first()

    keys = PAIRED[config["kind"]][0]
    timings: dict[str, list[float]] = {key: [] for key in keys}
    with torch.inference_mode():
        first(), second()  # warmup
        for round_ in range(2 * config["batches"]):
            order = list(zip(keys, (first, second)))
            for key, call in order if round_ % 2 == 0 else order[::-1]:  # alternate who goes first
                timings[key] += time_calls(call, 0, 1)
    return timings


def pipeline_work(config: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import pipeline

    import peft_vision_lora  # noqa: F401  registers the adapter folder format with transformers

    classify = pipeline("image-classification", model=config["adapters"][0], device="cpu")
    images = load_images(config["batch_size"], config["image_size"])
    pixel_values = classify.image_processor(images, return_tensors="pt")["pixel_values"]
    load_peak = reset_peak_rss()

    def bare() -> None:
        with torch.inference_mode():
            classify.model(pixel_values=pixel_values)

    def end_to_end() -> None:
        classify(images, batch_size=config["batch_size"])

    for fn in (bare, end_to_end):  # warmup
        fn()
    # Interleaved in one process, so both see the same machine load.
    pipeline_s, bare_s = [], []
    for _ in range(config["batches"]):
        bare_s += time_calls(bare, 0, 1)
        pipeline_s += time_calls(end_to_end, 0, 1)
    return {"pipeline_s": pipeline_s, "bare_s": bare_s, "load_peak_rss_mb": load_peak}


def serving_work(config: dict[str, Any]) -> dict[str, Any]:
    import torch

    import peft_vision_lora as pvl

    names = [f"task{i}" for i in range(len(config["adapters"]))]
    if config["variant"] == "multi-adapter":
        server = pvl.MultiAdapterClassifier(config["model_path"])
        for name, folder in zip(names, config["adapters"]):
            server.add_adapter(name, folder)

        def classify(name: str, pixel_values: torch.Tensor) -> torch.Tensor:
            return server(pixel_values, adapter=name)
    else:
        models = {name: pvl.load_model(folder, merge=True) for name, folder in zip(names, config["adapters"])}

        def classify(name: str, pixel_values: torch.Tensor) -> torch.Tensor:
            return models[name](pixel_values=pixel_values).logits

    size = config["image_size"]
    pixel_values = torch.randn(config["batch_size"], 3, size, size)
    setup_rss = current_rss_mb()
    load_peak = reset_peak_rss()
    times = []
    with torch.inference_mode():
        for _ in range(config["batches"]):
            for name in names:  # round robin over tasks, as a multi-tenant server would see them
                start = time.perf_counter()
                classify(name, pixel_values)
                times.append(time.perf_counter() - start)
    return {"batch_s": times, "setup_rss_mb": setup_rss, "load_peak_rss_mb": load_peak}


def mixed_work(config: dict[str, Any]) -> dict[str, Any]:
    """The same images, a quarter per adapter: one mixed forward, or one forward per adapter."""
    import torch

    import peft_vision_lora as pvl

    names = [f"task{i}" for i in range(len(config["adapters"]))]
    server = pvl.MultiAdapterClassifier(config["model_path"])
    for name, folder in zip(names, config["adapters"]):
        server.add_adapter(name, folder)
    per_adapter = max(1, config["batch_size"] // len(names))
    size = config["image_size"]
    pixel_values = torch.randn(per_adapter * len(names), 3, size, size)
    owners = [name for name in names for _ in range(per_adapter)]

    if config["variant"] == "mixed-batch":

        def classify() -> None:
            server(pixel_values, adapter=owners)
    else:

        def classify() -> None:
            for i, name in enumerate(names):
                server(pixel_values[i * per_adapter : (i + 1) * per_adapter], adapter=name)

    setup_rss = current_rss_mb()
    load_peak = reset_peak_rss()
    times = time_calls(classify, config["warmup"], config["batches"])
    peak_rss = peak_rss_mb()  # before the profiler's own allocations
    tensor_peak = tensor_peak_mb(classify, [*server.parameters(), *server.buffers(), pixel_values])
    return {
        "batch_s": times,
        "images": len(owners),
        "setup_rss_mb": setup_rss,
        "load_peak_rss_mb": load_peak,
        "peak_rss_mb": peak_rss,
        "tensor_peak_mb": tensor_peak,
    }


def work(config: dict[str, Any]) -> dict[str, Any]:
    kind = config["kind"]
    workers = {
        "forward": forward_work,
        "paired": paired_work,
        "evaluation": paired_work,
        "pipeline": pipeline_work,
        "serving": serving_work,
        "mixed": mixed_work,
    }
    return workers[kind](config)


# ------------------------------------------------------------------------------------------------------------ driver


def make_adapters(base: str, folder: Path, count: int) -> list[str]:
    """``count`` adapters with random (non-zero) LoRA weights and heads, so merging changes the weights."""
    import torch

    import peft_vision_lora as pvl

    folders = []
    for i in range(count):
        torch.manual_seed(i)
        model = pvl.build_model(base, [f"t{i}-class{j}" for j in range(NUM_LABELS)], init_lora_weights=False)
        folders.append(str(pvl.save_pretrained(model, folder / f"adapter{i}")))
    return folders


def main() -> None:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["vit-s14", "vit-b16"], default=["vit-s14", "vit-b16"])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="which measurements to run")
    parser.add_argument("--batches", type=int, default=None, help="timed batches per worker")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224, help="e.g. 112: the fast CPU recipe's evaluations")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    batches = args.batches or (2 if args.quick else 5)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    notes, configs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        bases = {}
        if args.quick:
            bases["tiny-vit"] = str(make_random_vit(Path(tmp) / "tiny-vit", quick=True))
        else:
            if "vit-s14" in args.models:
                if (SHARED_VIT / "model.safetensors").is_file():
                    bases["vit-s14"] = str(SHARED_VIT)
                else:
                    notes.append(f"ViT-S/14 skipped: {SHARED_VIT} not found (../shared is absent).")
            if "vit-b16" in args.models:
                bases["vit-b16"] = str(make_random_vit(Path(tmp) / "vit-b16", quick=False))
        for model, path in bases.items():
            common = {
                "model": model,
                "model_path": path,
                "adapters": make_adapters(path, Path(tmp) / f"{model}-adapters", NUM_ADAPTERS),
                "image_size": 32 if args.quick else args.image_size,
                "batch_size": args.batch_size,
                "warmup": 1,
                "batches": batches,
                "threads": args.threads,
            }
            model_configs = [{"name": f"{model}/{v}", "kind": "forward", "variant": v} for v in FORWARD_VARIANTS]
            model_configs.append({"name": f"{model}/paired", "kind": "paired", "variant": "base+merged"})
            model_configs.append({"name": f"{model}/evaluation", "kind": "evaluation", "variant": "unmerged+merged"})
            model_configs.append({"name": f"{model}/pipeline", "kind": "pipeline", "variant": "pipeline"})
            model_configs += [{"name": f"{model}/{v}", "kind": "serving", "variant": v} for v in SERVING_VARIANTS]
            model_configs += [{"name": f"{model}/{v}", "kind": "mixed", "variant": v} for v in MIXED_VARIANTS]
            configs += [config | common for config in model_configs if config["kind"] in args.kinds]
        results = alternate(Path(__file__), configs, repeats)

    info = machine_info(args.threads)
    rows, summary = summarize(configs, results)
    print(format_machine(info))
    print(
        f"Batch {args.batch_size}, {configs[0]['image_size'] if configs else '-'} px, torch.inference_mode; "
        f"{repeats} worker(s) per configuration x {batches} timed batches after warmup; median (min–max).\n"
    )
    print(
        markdown_table(
            ["model", "configuration", "s / batch", "images/s", "peak RSS MiB (serving)", "RSS after load MiB"],
            [
                [r["model"], r["variant"], r["time_text"], f"{r['images_per_s']:.1f}", r["peak_text"], r["setup_text"]]
                for r in rows
            ],
        )
    )
    mixed = [r for r in rows if r["tensor_peak_mb"]]
    if mixed:
        print(
            f"\nThe same images, a quarter per adapter, on one MultiAdapterClassifier with {NUM_ADAPTERS} adapters:\n"
        )
        print(
            markdown_table(
                ["model", "configuration", "images", "s / round", "tensor peak MiB", "peak RSS MiB"],
                [
                    [
                        r["model"],
                        r["variant"],
                        str(r["images"]),
                        r["time_text"],
                        f"{r['tensor_peak_mb']['median']:.1f}",
                        r["peak_text"],
                    ]
                    for r in mixed
                ],
            )  # fmt: skip
        )
    print()
    print(markdown_table(["model", "ratio", "value"], [[s["model"], s["ratio"], s["text"]] for s in summary]))
    for note in notes:
        print(f"\nNote: {note}")
    write_json(
        args.json,
        {"benchmark": "inference", "machine": info, "rows": rows, "ratios": summary, "notes": notes, "runs": results},
    )


def ratio(model: str, name: str, value: float, best: float | None = None, target: float | None = None) -> dict:
    """One summary line; ``best`` is the ratio of the fastest samples, ``met`` judges the median."""
    if target is None:
        text = f"{value:.2f}x" if best is None else f"median {value:.2f}x, best {best:.2f}x"
    else:
        text = verdict(value, best, target, percent="overhead" in name)
    met = None if target is None else value <= target
    best_met = None if target is None else best <= target
    return {"model": model, "ratio": name, "value": value, "best": best, "target": target, "met": met,
            "best_met": best_met, "text": text}  # fmt: skip


def summarize(
    configs: list[dict[str, Any]], results: dict[str, list[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Table rows per configuration and the ratios the issue sets targets for."""
    rows, times = [], {}
    for config in configs:
        runs = results[config["name"]]
        batch = config["batch_size"]
        if config["kind"] in PAIRED:
            (below, above), labels = PAIRED[config["kind"]]
            measured = {label: per_run_median(runs, key) for label, key in zip(labels, (below, above))}
            ratios = [statistics.median(r[above]) / statistics.median(r[below]) for r in runs]
            best = min(min(r[above]) for r in runs) / min(min(r[below]) for r in runs)
            times[(config["model"], f"{config['kind']}-merged")] = (statistics.median(ratios), best)
        elif config["kind"] == "pipeline":
            measured = {
                "pipeline": per_run_median(runs, "pipeline_s"),
                "bare forward (pipeline's model)": per_run_median(runs, "bare_s"),
            }
            # The per-worker ratio cancels machine-load drift between workers better than a ratio of medians.
            overheads = [statistics.median(r["pipeline_s"]) / statistics.median(r["bare_s"]) - 1 for r in runs]
            best = min(min(r["pipeline_s"]) for r in runs) / min(min(r["bare_s"]) for r in runs) - 1
            times[(config["model"], "pipeline-overhead")] = (statistics.median(overheads), best)
        else:
            measured = {config["variant"]: per_run_median(runs, "batch_s")}
        peak = scalar_stat(runs, "peak_rss_mb")
        setup = scalar_stat(runs, "setup_rss_mb") if "setup_rss_mb" in runs[0] else None
        tensor_peak = scalar_stat(runs, "tensor_peak_mb") if "tensor_peak_mb" in runs[0] else None
        for variant, stat in measured.items():
            times[(config["model"], variant)] = stat
            rows.append(
                {
                    "model": config["model"],
                    "variant": variant,
                    "batch_s": stat.as_dict(),
                    "images": batch,
                    "images_per_s": batch / stat.median,
                    "peak_rss_mb": peak.as_dict(),
                    "setup_rss_mb": setup.as_dict() if setup else None,
                    "tensor_peak_mb": tensor_peak.as_dict() if tensor_peak else None,
                    "time_text": stat.format(),
                    "peak_text": peak.format(0),
                    "setup_text": setup.format(0) if setup else "-",
                }
            )
    summary = []
    for model in dict.fromkeys(c["model"] for c in configs):
        # With --kinds only some configurations ran: give the ratios whose measurements are there.
        if (model, "paired-merged") in times:
            paired, paired_best = times[(model, "paired-merged")]
            summary.append(ratio(model, "merged / base time, paired in one worker", paired, paired_best, TARGET_MERGED))
        if (model, "evaluation-merged") in times:
            paired, paired_best = times[(model, "evaluation-merged")]
            summary.append(ratio(model, "merged in place / unmerged time, paired in one worker", paired, paired_best))
        if (model, "base") in times:
            base = times[(model, "base")]
            merged, unmerged = times[(model, "lora-merged")], times[(model, "lora-unmerged")]
            separate = "merged / base time, separate workers"
            summary += [
                ratio(model, separate, merged.median / base.median, merged.min / base.min),
                ratio(model, "unmerged / base time", unmerged.median / base.median, unmerged.min / base.min),
            ]
        if (model, "pipeline-overhead") in times:
            overhead, best = times[(model, "pipeline-overhead")]
            name = "pipeline overhead over bare forward"
            summary.append(ratio(model, name, overhead, best, TARGET_PIPELINE_OVERHEAD))
        memory = {r["variant"]: r["peak_rss_mb"]["median"] for r in rows if r["model"] == model}
        if "multi-adapter" in memory:
            name = f"{NUM_ADAPTERS} adapters on 1 backbone / {NUM_ADAPTERS} merged models, peak RSS"
            summary.append(ratio(model, name, memory["multi-adapter"] / memory["merged-models"]))
        if (model, "mixed-batch") in times:
            mixed, single = times[(model, "mixed-batch")], times[(model, "single-adapter-batches")]
            tensor = {
                r["variant"]: r["tensor_peak_mb"]["median"] for r in rows if r["model"] == model and r["tensor_peak_mb"]
            }
            prefix = f"1 mixed batch of {NUM_ADAPTERS} adapters / {NUM_ADAPTERS} single-adapter batches"
            summary += [
                ratio(model, f"{prefix}, time", mixed.median / single.median, mixed.min / single.min),
                ratio(model, f"{prefix}, peak RSS", memory["mixed-batch"] / memory["single-adapter-batches"]),
                ratio(model, f"{prefix}, tensor peak", tensor["mixed-batch"] / tensor["single-adapter-batches"]),
            ]
    return rows, summary


if __name__ == "__main__" and not child_main(work):
    main()
