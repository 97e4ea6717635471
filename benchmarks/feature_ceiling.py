"""How far the frozen features go: the linear probe that LP-FT starts from, per dataset and input size.

LoRA fine-tuning builds on what the backbone already separates. This benchmark measures that starting point with the
package's own code: the eval transform, the head's input captured by ``backbone_features`` (ViT: the final-layernormed
CLS token) and ``fit_linear_head`` (the L2-regularised L-BFGS fit behind ``--head_init linear_probe``). The L2 penalty
is chosen on a validation fifth carved from train (stratified); the chosen penalty is then refitted on all of train
and reported on test, next to the penalty LP-FT uses (``fit_linear_head``'s default).

    python benchmarks/feature_ceiling.py                              # flowers12, cifar10-1k, fashion-mnist-1k
    python benchmarks/feature_ceiling.py --datasets cifar10-1k --sizes 56 112 224
    python benchmarks/feature_ceiling.py --quick                      # tiny random ViT: a smoke run
"""

from __future__ import annotations

import inspect
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    SHARED_VIT,
    child_main,
    common_parser,
    format_machine,
    machine_info,
    markdown_table,
    run_child,
    write_json,
)
from time_to_accuracy import DATASETS, make_quick_assets, prepare_datasets

PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)


def work(config: dict[str, Any]) -> dict[str, Any]:
    """Features of every split at one size, then the probe per penalty."""
    import torch
    from accelerate import Accelerator
    from transformers.utils import logging as hf_logging

    from peft_vision_lora.data import ImageTransforms, load_image_dataset
    from peft_vision_lora.processing import load_image_processor
    from peft_vision_lora.training import ModelArguments
    from peft_vision_lora.training.data import class_names
    from peft_vision_lora.training.features import FeatureDataset, backbone_features, fit_linear_head
    from peft_vision_lora.training.model import build_training_model, forward_kwargs

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    size, accelerator = config["image_size"], Accelerator(cpu=True)
    # The carve only chooses the penalty; its rows are put back for the final fit on all of train.
    data = load_image_dataset(config["dataset"], val_fraction=0.2, seed=config["seed"])
    labels = class_names(data, config["dataset"])
    model = build_training_model(ModelArguments(method="linear"), config["model_path"], labels, image_size=size)
    eval_tf = ImageTransforms.from_processor(load_image_processor(config["model_path"], image_size=size), train=False)
    started, features = time.perf_counter(), {}
    for split in ("train", "validation", "test"):
        features[split] = backbone_features(
            model, data[split], eval_tf, accelerator, batch_size=64, forward_kwargs=forward_kwargs(model, size)
        )
    images = sum(len(f) for f in features.values())
    seconds_per_1k = (time.perf_counter() - started) / images * 1000
    whole_train = FeatureDataset(
        torch.cat([features["train"].features, features["validation"].features]),
        torch.cat([features["train"].labels, features["validation"].labels]),
    )

    def accuracy(fit_on: FeatureDataset, score_on: FeatureDataset, l2: float) -> float:
        head = torch.nn.Linear(fit_on.features.shape[1], len(labels))
        fit_linear_head(head, fit_on, l2=l2)
        with torch.no_grad():
            return (head(score_on.features).argmax(-1) == score_on.labels).float().mean().item()

    val = {l2: accuracy(features["train"], features["validation"], l2) for l2 in config["penalties"]}
    chosen = max(val, key=lambda l2: (val[l2], l2))  # ties: the stronger penalty
    default_l2 = inspect.signature(fit_linear_head).parameters["l2"].default
    return {
        "val_top1": val,
        "chosen_l2": chosen,
        "test_top1": accuracy(whole_train, features["test"], chosen),
        "default_l2": default_l2,
        "test_top1_default_l2": accuracy(whole_train, features["test"], default_l2),
        "feature_s_per_1k_images": seconds_per_1k,
        "train_images": len(whole_train),
    }


def main() -> None:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[56, 112, 224])
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation carve")
    args = parser.parse_args()
    info = machine_info(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            model_path, data_path = make_quick_assets(Path(tmp))
            datasets, sizes, penalties = {"quick": data_path}, [32], PENALTIES[:2]
        else:
            model_path, datasets, sizes, penalties = (
                SHARED_VIT,
                prepare_datasets(args.datasets, Path(tmp)),
                args.sizes,
                PENALTIES,
            )
        for name, path in datasets.items():
            for size in sizes:
                config = {
                    "model_path": str(model_path),
                    "dataset": str(path),
                    "image_size": size,
                    "seed": args.seed,
                    "penalties": list(penalties),
                    "threads": args.threads,
                }
                result = run_child(Path(__file__), config)
                rows.append({"dataset": name, "image_size": size, **result})
                print(f"{name} {size}px: test {result['test_top1']:.3f} (l2 {result['chosen_l2']:g})", flush=True)
    table = markdown_table(
        ["dataset", "px", "val top-1 per L2", "chosen L2", "test top-1", "test top-1 at LP-FT's L2", "s / 1k images"],
        [
            [
                row["dataset"],
                row["image_size"],
                " / ".join(f"{row['val_top1'][l2] * 100:.1f}" for l2 in row["val_top1"]),
                f"{row['chosen_l2']:g}",
                f"{row['test_top1'] * 100:.1f}",
                f"{row['test_top1_default_l2'] * 100:.1f}",
                f"{row['feature_s_per_1k_images']:.1f}",
            ]
            for row in rows
        ],
    )
    print(format_machine(info))
    print(f"L2 penalties tried: {', '.join(f'{p:g}' for p in penalties)}")
    print(table)
    write_json(args.json, {"benchmark": "feature_ceiling", "machine": info, "rows": rows})


if __name__ == "__main__":
    if not child_main(work):
        main()
