"""The reference a user would write by hand: stock transformers + PEFT in a plain PyTorch loop, no peft_vision_lora.

LoRA r=8 on q, k, v (transformers 5 names), the head trained, AdamW lr 2e-3 with a one-cycle schedule, batch 32,
every token, fp32, random-resized crops (scale 0.35-1) and flips made with PIL, evaluation after every epoch, the
adapter saved at the end. ``benchmarks/time_to_accuracy.py`` times this whole command beside ours.

    python benchmarks/hand_loop.py --model ../shared/models/vit-small-patch14-dinov2-imgfocus \
        --dataset FOLDER --image_size 112 --epochs 3 --output_dir /tmp/hand
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader
from transformers import AutoModelForImageClassification

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def read_split(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    return [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).iterdir()) if p.is_file()]


def to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    pixels = (np.asarray(image, dtype=np.float32) / 255 - MEAN) / STD
    return torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32))


def train_image(path: Path, size: int, rng: random.Random) -> torch.Tensor:
    image = PIL.Image.open(path).convert("RGB")
    w, h = image.size
    for _ in range(10):  # RandomResizedCrop(scale=(0.35, 1), ratio=(3/4, 4/3)), as torchvision draws it
        area = w * h * rng.uniform(0.35, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            image = image.crop((x, y, x + cw, y + ch))
            break
    image = image.resize((size, size), PIL.Image.BICUBIC)
    return to_tensor(image.transpose(PIL.Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image)


def eval_image(path: Path, size: int) -> torch.Tensor:
    return to_tensor(PIL.Image.open(path).convert("RGB").resize((size, size), PIL.Image.BICUBIC))


@torch.no_grad()
def evaluate(model: torch.nn.Module, items: list[tuple[Path, int]], size: int) -> float:
    model.eval()
    loader = DataLoader(items, batch_size=64, collate_fn=lambda b: b)
    correct = 0
    for batch in loader:
        pixels = torch.stack([eval_image(p, size) for p, _ in batch])
        logits = model(pixel_values=pixels, interpolate_pos_encoding=True).logits
        correct += (logits.argmax(-1) == torch.tensor([y for _, y in batch])).sum().item()
    model.train()
    return correct / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True, type=Path, help="train/ and test/ (or validation/) class folders")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    classes = sorted(p.name for p in (args.dataset / "train").iterdir() if p.is_dir())
    held_out = args.dataset / "test" if (args.dataset / "test").is_dir() else args.dataset / "validation"
    train, test = read_split(args.dataset / "train", classes), read_split(held_out, classes)
    model = AutoModelForImageClassification.from_pretrained(
        args.model, num_labels=len(classes), ignore_mismatched_sizes=True
    )
    qkv = ["q_proj", "k_proj", "v_proj"]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=qkv, modules_to_save=["classifier"]))
    loader = DataLoader(train, batch_size=32, shuffle=True, drop_last=True, collate_fn=lambda b: b)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=args.epochs * len(loader))
    log, train_s = [], 0.0
    for epoch in range(args.epochs):
        started = time.perf_counter()
        for batch in loader:
            pixels = torch.stack([train_image(p, args.image_size, rng) for p, _ in batch])
            logits = model(pixel_values=pixels, interpolate_pos_encoding=True).logits
            loss = F.cross_entropy(logits, torch.tensor([y for _, y in batch]))
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        train_s += time.perf_counter() - started  # evaluation left out, as in the package's train_s
        log.append({"epoch": epoch + 1, "test_top1": evaluate(model, test, args.image_size), "train_s": train_s})
        print(json.dumps(log[-1]), flush=True)
    model.save_pretrained(args.output_dir)
    summary = {"log": log, "total_steps": args.epochs * len(loader), "global_batch_size": 32, "images": len(train)}
    Path(args.output_dir, "log.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
