"""A short real run: LoRA on the shared DINOv2 ViT-S/14 learns flowers12 far beyond the majority-class baseline."""

from __future__ import annotations

import pytest

from peft_vision_lora.training import parse_args, train

MAJORITY_BASELINE = 20 / 240  # the test split is balanced: 12 classes x 20 images


@pytest.mark.slow
@pytest.mark.shared
def test_lora_on_flowers12_beats_the_majority_baseline(shared_vit, flowers12, tmp_path):
    # 8 images per class at 98 px (7x7 patches, position embeddings interpolated): 18 steps, about a minute on 2 cores.
    flags = [
        "--model",
        str(shared_vit),
        "--dataset",
        str(flowers12),
        "--normalization",
        "imagenet",
        "--image_size",
        "98",
        "--shots",
        "8",
        "--num_train_epochs",
        "3",
        "--min_steps",
        "0",
        "--per_device_train_batch_size",
        "16",
        "--learning_rate",
        "2e-3",
        "--head_lr",
        "2e-2",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--output_dir",
        str(tmp_path / "flowers12-lora"),
        "--disable_tqdm",
    ]
    metrics = train(*parse_args(flags))
    assert metrics["test"]["num_samples"] == 240
    assert metrics["test"]["top1_accuracy"] > 0.6 > 7 * MAJORITY_BASELINE  # measured: 0.775
    assert metrics["test"]["top5_accuracy"] > 0.9
