"""Time and peak memory of one optimizer step: LoRA vs full fine-tuning vs linear probe.

One step is forward, backward and an AdamW step at batch 8, 224 px, on ViT-B/16 geometry (random init, no download)
and the shared ViT-S/14, each with and without gradient checkpointing and in fp32 or bf16 CPU autocast (weights and
optimizer stay fp32). Every configuration runs in its own subprocess, in A B A B order; see ``_harness``.

    python benchmarks/train_step.py                  # the full table (about 20 minutes on 2 cores)
    python benchmarks/train_step.py --quick          # tiny random model: a smoke run
    # on a GPU: ViT-B/16, bf16, eager and compiled, with model FLOPs utilisation against the device's dense peak
    python benchmarks/train_step.py --device cuda --models vit-b16 --precisions bf16 --compile off on \
        --checkpointing off --batch-size 64 --peak-tflops 989

On CUDA the memory column "peak tensors" is ``torch.cuda.max_memory_allocated``; MFU counts 2 FLOPs per multiply-add
and a step as 1 (probe), 2 (LoRA) or 3 (full) forwards.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from pathlib import Path
from typing import Any

from _harness import (
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

METHODS = ("lora", "full", "probe")
STEP_FORWARDS = {"probe": 1, "lora": 2, "full": 3}
NUM_LABELS = 10
TARGET_TIME = 0.70
TARGET_MEMORY = 0.75
TARGET_MEMORY_CHECKPOINTING = 0.45
TARGET_TOKEN_DROPOUT = 0.60  # LoRA step with half the patch tokens, against every token


# ------------------------------------------------------------------------------------------------------------ worker


def build(config: dict[str, Any]):
    """(model, trainable parameters, loss function of (pixel_values, labels)) for one configuration, built by the
    code ``train()`` runs: the same model builder, checkpointing call and token dropout hook."""
    import torch
    from transformers.utils import logging as hf_logging

    from peft_vision_lora.token_dropout import TokenDropout
    from peft_vision_lora.training import ModelArguments, TrainingArguments
    from peft_vision_lora.training.model import build_training_model, enable_gradient_checkpointing, head_module

    hf_logging.set_verbosity_error()  # the fresh head is reported as missing by design
    method, path = config["method"], config["model_path"]
    # "probe" is train()'s --method linear, timed on images rather than on its cached features.
    args = ModelArguments(method="linear" if method == "probe" else method, preset="qkv", r=8)
    model = build_training_model(args, path, [f"class{i}" for i in range(NUM_LABELS)])
    if config.get("token_keep", 1.0) < 1:
        TokenDropout(model, config["token_keep"], min_tokens=TrainingArguments(output_dir="-").token_keep_min)
    model.train()
    if config["checkpointing"]:
        enable_gradient_checkpointing(model)

    if method == "probe":
        # A linear probe never back-propagates into the backbone: run it without autograd bookkeeping.
        head, backbone = head_module(model), model.base_model

        def loss_fn(pixel_values, labels):
            with torch.no_grad():
                features = backbone(pixel_values=pixel_values).last_hidden_state[:, 0]
            return torch.nn.functional.cross_entropy(head(features.float()), labels)
    else:

        def loss_fn(pixel_values, labels):
            return model(pixel_values=pixel_values, labels=labels).loss

    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, loss_fn


def work(config: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    device = torch.device(config.get("device", "cpu"))
    cuda = device.type == "cuda"
    baseline_rss = current_rss_mb()
    model, params, loss_fn = build(config)
    model.to(device)
    if config.get("compile"):
        model.compile()  # nn.Module.compile: the module's forward through torch.compile, in place
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    size, batch = config["image_size"], config["batch_size"]
    pixel_values = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, NUM_LABELS, (batch,), device=device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if config["precision"] == "bf16" else contextlib.nullcontext()
    )
    setup_rss = current_rss_mb()
    load_peak = reset_peak_rss()

    def step() -> None:
        with autocast:
            loss = loss_fn(pixel_values, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()  # time the work, not its launch

    # One untimed, checked step first (it also warms up the allocator): every trainable parameter must receive a
    # gradient, or the timing means nothing.
    with autocast:
        loss = loss_fn(pixel_values, labels)
    loss.backward()
    without_grad = [i for i, p in enumerate(params) if p.grad is None]
    if without_grad:
        raise RuntimeError(f"{config['name']}: {len(without_grad)} of {len(params)} trainable tensors got no gradient.")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = time_calls(step, config["warmup"], config["steps"])
    peak_rss = peak_rss_mb()
    if cuda:
        tensor_peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        # One more step under the profiler, after the timed ones so its overhead touches neither time nor RSS.
        resident = [*model.parameters(), *model.buffers(), pixel_values, labels]
        resident += [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
        tensor_peak = tensor_peak_mb(step, resident)
    return {
        "step_s": times,
        "peak_rss_mb": peak_rss,
        "tensor_peak_mb": tensor_peak,
        "forward_macs": forward_macs(model.config, size),
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "baseline_rss_mb": baseline_rss,
        "setup_rss_mb": setup_rss,
        "load_peak_rss_mb": load_peak,
    }


def forward_macs(config: Any, image_size: int) -> int:
    """Multiply-adds of one ViT forward per image (patch embedding, attention and MLP matmuls, attention maps).

    ViT-B/16 at 224 px: 17.5e9, the "17.6 GFLOPs" usually quoted (which count multiply-adds).
    """
    tokens = (image_size // config.patch_size) ** 2 + 1
    width, mlp = config.hidden_size, config.intermediate_size
    patch = (tokens - 1) * config.num_channels * config.patch_size**2 * width
    per_layer = tokens * (4 * width * width + 2 * width * mlp) + 2 * tokens * tokens * width
    return patch + config.num_hidden_layers * per_layer


# ------------------------------------------------------------------------------------------------------------ driver


def main() -> None:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["vit-b16", "vit-s14"], default=["vit-b16", "vit-s14"])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--checkpointing", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per worker")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off"], help="torch.compile the model")
    parser.add_argument(
        "--token-keep", nargs="+", type=float, default=[1.0], help="LoRA only: fractions of patch tokens kept (1: all)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the device's dense peak (e.g. bf16) in TFLOP/s: adds MFU"
    )
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 2)
    steps = args.steps or (2 if args.quick else 3)

    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        if "vit-b16" in args.models:
            # --quick swaps in a tiny ViT under its own name, so its rows cannot be mistaken for ViT-B/16 figures.
            paths["tiny-vit" if args.quick else "vit-b16"] = make_random_vit(Path(tmp) / "vit", args.quick)
        if "vit-s14" in args.models:
            if args.quick:
                notes.append("--quick: the shared ViT-S/14 is skipped.")
            elif (SHARED_VIT / "model.safetensors").is_file():
                paths["vit-s14"] = str(SHARED_VIT)
            else:
                notes.append(f"ViT-S/14 skipped: {SHARED_VIT} not found (../shared is absent).")
        configs = []
        for model, method, checkpointing, precision, compiled, keep in itertools.product(
            paths, args.methods, args.checkpointing, args.precisions, args.compile, args.token_keep
        ):
            if method == "probe" and checkpointing == "on":
                continue  # the probe stores no backbone activations: nothing to checkpoint
            if method != "lora" and keep != 1:
                continue  # token dropout is a LoRA training option
            # A compiled run is its own precision variant, so the LoRA/full ratios pair like with like.
            variant = precision + ("+compile" if compiled == "on" else "")
            name = f"{model}/{method}/gc-{checkpointing}/{variant}" + (f"/keep{keep:g}" if keep != 1 else "")
            configs.append(
                {
                    "name": name,
                    "token_keep": keep,
                    "model": model,
                    "model_path": str(paths[model]),
                    "method": method,
                    "checkpointing": checkpointing == "on",
                    "precision": precision,
                    "variant": variant,
                    "compile": compiled == "on",
                    "device": args.device,
                    "image_size": 32 if args.quick else 224,
                    "batch_size": args.batch_size,
                    # The first, checked step is the warmup; compiled graphs may recompile once more after it.
                    "warmup": 2 if compiled == "on" else 0,
                    "steps": steps,
                    "threads": args.threads,
                }
            )
        results = alternate(Path(__file__), configs, repeats)

    rows, table = [], []
    for config in configs:
        runs = results[config["name"]]
        time_stat, peak_stat = per_run_median(runs, "step_s"), scalar_stat(runs, "peak_rss_mb")
        tensor_stat = scalar_stat(runs, "tensor_peak_mb")
        keys = ("name", "model", "method", "checkpointing", "batch_size", "device", "token_keep")
        row = {key: config[key] for key in keys} | {
            "precision": config["variant"],
            "step_s": time_stat.as_dict(),
            "peak_rss_mb": peak_stat.as_dict(),
            "tensor_peak_mb": tensor_stat.as_dict(),
            "load_peak_rss_mb": scalar_stat(runs, "load_peak_rss_mb").as_dict(),
            "baseline_rss_mb": scalar_stat(runs, "baseline_rss_mb").as_dict(),
            "trainable_params": runs[0]["trainable_params"],
            "total_params": runs[0]["total_params"],
        }
        # Model FLOPs per step: a forward is 2 x multiply-adds; a LoRA step costs about 2 forwards (the backward
        # computes input gradients only), full fine-tuning about 3, a probe 1.
        step_flops = 2 * runs[0]["forward_macs"] * config["batch_size"] * STEP_FORWARDS[config["method"]]
        row["tflops"] = step_flops / time_stat.median / 1e12
        row["mfu"] = row["tflops"] / args.peak_tflops if args.peak_tflops else None
        rows.append(row)
        table.append(
            [
                config["model"],
                config["method"] + (f" keep {config['token_keep']:g}" if config["token_keep"] != 1 else ""),
                "on" if config["checkpointing"] else "off",
                config["variant"],
                f"{millions(row['trainable_params'])} / {millions(row['total_params'])}",
                time_stat.format(),
                f"{config['batch_size'] / time_stat.median:.1f}",
                peak_stat.format(0),
                f"{tensor_stat.median:.1f}",
                f"{row['baseline_rss_mb']['median']:.0f}",
                f"{row['tflops']:.3g}",
                f"{row['mfu']:.1%}" if row["mfu"] is not None else "-",
            ]
        )

    ratios = compute_ratios(rows)
    info = machine_info(args.threads)
    print(format_machine(info))
    print(
        f"Batch {args.batch_size}, {configs[0]['image_size'] if configs else '-'} px, AdamW (fused), {args.device}; "
        f"{repeats} worker(s) per configuration x {steps} timed steps after one untimed step; median (min–max).\n"
    )
    print(
        markdown_table(
            [
                "model",
                "method",
                "grad ckpt",
                "precision",
                "trainable / total",
                "step s",
                "img/s",
                "peak RSS MiB",
                "peak tensors MiB",
                "RSS after import MiB",
                "model TFLOP/s",
                "MFU",
            ],
            table,
        )
    )
    print()
    print(
        markdown_table(
            [
                "model",
                "grad ckpt",
                "precision",
                "LoRA/full time",
                "LoRA/full peak tensors",
                "LoRA/full peak RSS",
                "probe/full time",
            ],
            [
                [
                    r["model"],
                    r["checkpointing"],
                    r["precision"],
                    r["time_text"],
                    r["tensor_text"],
                    r["memory_text"],
                    r["probe_text"],
                ]
                for r in ratios
            ],
        )
    )
    token_ratios = compute_token_ratios(rows)
    if token_ratios:
        print()
        print(
            markdown_table(
                ["model", "grad ckpt", "precision", "keep", "LoRA step time vs every token"],
                [[r["model"], r["checkpointing"], r["precision"], f"{r['keep']:g}", r["text"]] for r in token_ratios],
            )
        )
    for note in notes:
        print(f"\nNote: {note}")
    payload = {
        "benchmark": "train_step",
        "machine": info,
        "rows": rows,
        "ratios": ratios,
        "token_ratios": token_ratios,
        "notes": notes,
    }
    write_json(args.json, payload | {"runs": results})


def millions(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 1e4 else str(count)


def compute_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LoRA/full and probe/full per (model, checkpointing, precision), with the issue's targets."""
    by_key = {(r["model"], r["method"], r["checkpointing"], r["precision"]): r for r in rows if r["token_keep"] == 1}
    ratios = []
    for (model, method, checkpointing, precision), full in by_key.items():
        if method != "full" or (model, "lora", checkpointing, precision) not in by_key:
            continue
        lora = by_key[(model, "lora", checkpointing, precision)]
        probe = by_key.get((model, "probe", False, precision))
        time_ratio = lora["step_s"]["median"] / full["step_s"]["median"]
        time_best = lora["step_s"]["min"] / full["step_s"]["min"]
        memory_ratio = lora["peak_rss_mb"]["median"] / full["peak_rss_mb"]["median"]
        memory_best = lora["peak_rss_mb"]["min"] / full["peak_rss_mb"]["min"]
        tensor_ratio = lora["tensor_peak_mb"]["median"] / full["tensor_peak_mb"]["median"]
        tensor_best = lora["tensor_peak_mb"]["min"] / full["tensor_peak_mb"]["min"]
        memory_target = TARGET_MEMORY_CHECKPOINTING if checkpointing else TARGET_MEMORY
        ratio = {
            "model": model,
            "checkpointing": "on" if checkpointing else "off",
            "precision": precision,
            "lora_full_time": time_ratio,
            "lora_full_time_best": time_best,
            "lora_full_peak_rss": memory_ratio,
            "lora_full_peak_rss_best": memory_best,
            "lora_full_tensor_peak": tensor_ratio,
            "lora_full_tensor_peak_best": tensor_best,
            "time_target": TARGET_TIME,
            "memory_target": memory_target,
            "time_met": time_ratio <= TARGET_TIME,
            "memory_met": memory_ratio <= memory_target,
            "tensor_memory_met": tensor_ratio <= memory_target,
            "probe_full_time": probe["step_s"]["median"] / full["step_s"]["median"] if probe else None,
        }
        ratio["time_text"] = verdict(time_ratio, time_best, TARGET_TIME)
        ratio["memory_text"] = verdict(memory_ratio, memory_best, memory_target)
        ratio["tensor_text"] = verdict(tensor_ratio, tensor_best, memory_target)
        ratio["probe_text"] = f"{ratio['probe_full_time']:.2f}x" if probe else "-"
        ratios.append(ratio)
    return ratios


def compute_token_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LoRA step time with token dropout against the same LoRA step on every token."""
    full = {
        (r["model"], r["checkpointing"], r["precision"]): r
        for r in rows
        if r["method"] == "lora" and r["token_keep"] == 1
    }
    ratios = []
    for row in rows:
        base = full.get((row["model"], row["checkpointing"], row["precision"]))
        if row["method"] != "lora" or row["token_keep"] == 1 or base is None:
            continue
        median = row["step_s"]["median"] / base["step_s"]["median"]
        best = row["step_s"]["min"] / base["step_s"]["min"]
        ratios.append(
            {
                "model": row["model"],
                "checkpointing": "on" if row["checkpointing"] else "off",
                "precision": row["precision"],
                "keep": row["token_keep"],
                "time_ratio": median,
                "time_ratio_best": best,
                "target": TARGET_TOKEN_DROPOUT if row["token_keep"] == 0.5 else None,
                "text": verdict(median, best, TARGET_TOKEN_DROPOUT) if row["token_keep"] == 0.5 else f"{median:.2f}x",
            }
        )
    return ratios


if __name__ == "__main__" and not child_main(work):
    main()
