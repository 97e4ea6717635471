"""The speed and recipe options of a run: token dropout, LoRA depth, progressive resolution, LP-FT, EMA, the
step floor; and that none of them changes what a saved adapter is."""

from __future__ import annotations

import json
import re

import PIL.Image
import pytest
import torch
from helpers.training import make_tiny_vit
from transformers import pipeline

import peft_vision_lora as pvl
from peft_vision_lora.architectures import get_architecture
from peft_vision_lora.training import parse_args, train

ALL_OPTIONS = [
    "--token_keep", "0.5", "--token_keep_min", "1",
    "--lora_layers", "1", "--resolution_schedule", "16", "32", "--head_init", "linear_probe",
    "--ema_decay", "0.9",
]  # fmt: skip


def run(model, data, out, *flags):
    flags = ["--model", str(model), "--dataset", str(data), "--output_dir", str(out), "--disable_tqdm", *flags]
    return train(*parse_args(flags))


def test_lora_layers_stops_backward_at_the_lowest_adapted_layer(tmp_path):
    folder = make_tiny_vit(tmp_path / "vit", num_hidden_layers=4)
    model = pvl.build_model(folder, ["a", "b"], lora_layers=2).train()
    arch = get_architecture(model)
    block = re.compile(rf"(?:.*\.)?{arch.layer_prefix}(\d+)")
    layers = {int(block.fullmatch(n).group(1)): m for n, m in model.named_modules() if block.fullmatch(n)}
    assert sorted(layers) == [0, 1, 2, 3]
    current: list[int] = [-1]
    saved: dict[int, int] = {}  # layer -> bytes autograd keeps for backward
    backward_called: set[int] = set()
    for i, layer in layers.items():
        layer.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i))
        layer.register_forward_hook(lambda m, a, o: current.__setitem__(0, -1))
        layer.register_full_backward_hook(lambda m, gi, go, i=i: backward_called.add(i))

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[current[0]] = saved.get(current[0], 0) + tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(pixel_values=torch.randn(2, 3, 32, 32)).logits.sum()
    loss.backward()
    assert {i for i in saved if i >= 0} == {2, 3}  # nothing kept for the frozen layers 0 and 1
    assert backward_called == {2, 3}  # and no gradient flows through them
    adapted = [n for n, p in model.named_parameters() if p.grad is not None and "lora_" in n]
    assert adapted and all(arch.layer_index(n) in (2, 3) for n in adapted)


@pytest.mark.slow
def test_every_option_together_saves_an_adapter_the_stock_pipeline_reproduces(tiny_vit, tiny_data, tmp_path):
    out = tmp_path / "run"
    metrics = run(tiny_vit, tiny_data, out, "--max_steps", "12", "--per_device_train_batch_size", "4", *ALL_OPTIONS)
    assert 0 <= metrics["train"]["data_wait_fraction"] < 1
    # The adapter covers the last layer only and the saved model sees every token: pipeline == load_model logits.
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert all(".layers.1." in name for name in adapter["target_modules"])
    model = pvl.load_model(out).eval()
    image = next((tiny_data / "test" / "red").iterdir())
    classify = pipeline("image-classification", model=str(out))
    scores = {r["label"]: r["score"] for r in classify(str(image), top_k=3)}
    inputs = classify.image_processor(images=[PIL.Image.open(image).convert("RGB")], return_tensors="pt")
    probs = model(**inputs).logits.softmax(-1)[0]
    expected = {model.config.id2label[i]: p.item() for i, p in enumerate(probs)}
    assert scores == pytest.approx(expected, abs=1e-5)


def test_min_steps_is_a_floor_and_max_steps_wins(tiny_vit, tiny_data, tmp_path):
    flags = ["--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--eval_strategy", "no"]
    assert run(tiny_vit, tiny_data, tmp_path / "a", *flags, "--min_steps", "7")["total_steps"] == 7
    assert run(tiny_vit, tiny_data, tmp_path / "b", *flags, "--min_steps", "2")["total_steps"] == 3  # 24 images / 8
    assert run(tiny_vit, tiny_data, tmp_path / "c", *flags, "--min_steps", "7", "--max_steps", "2")["total_steps"] == 2


def test_linear_probe_head_init_starts_from_a_fitted_head(tiny_vit, tiny_data, tmp_path):
    # One step at a tiny learning rate: the result is essentially the initial model.
    flags = ["--max_steps", "1", "--learning_rate", "1e-9", "--eval_strategy", "no", "--save_strategy", "no"]
    random_head = run(tiny_vit, tiny_data, tmp_path / "random", *flags, "--head_init", "random")
    probed = run(tiny_vit, tiny_data, tmp_path / "probed", *flags)  # the default
    assert probed["test"]["loss"] < random_head["test"]["loss"]
    assert probed["test"]["top1_accuracy"] > 0.9  # the colour classes are linearly separable in the tiny features


def test_linear_probe_shots_fits_the_head_on_that_many_images_per_class(tiny_vit, tiny_data, tmp_path, monkeypatch):
    import peft_vision_lora.training.head_init as head_init

    fitted = []  # the labels of the features each fit saw
    fit = head_init.fit_linear_head
    monkeypatch.setattr(head_init, "fit_linear_head", lambda head, data: fitted.append(data.labels) or fit(head, data))
    flags = ["--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no"]
    run(tiny_vit, tiny_data, tmp_path / "all", *flags)
    run(tiny_vit, tiny_data, tmp_path / "three", *flags, "--linear_probe_shots", "3")
    run(tiny_vit, tiny_data, tmp_path / "more", *flags, "--linear_probe_shots", "50")
    assert [torch.bincount(labels).tolist() for labels in fitted] == [[8, 8, 8], [3, 3, 3], [8, 8, 8]]
    with pytest.raises(ValueError, match="--linear_probe_shots must be positive, got 0"):
        parse_args(["--model", str(tiny_vit), "--dataset", str(tiny_data), "--output_dir", "x",
                    "--linear_probe_shots", "0"])  # fmt: skip


def test_resolution_schedule_must_end_at_the_target_size(tiny_vit, tiny_data, tmp_path):
    with pytest.raises(ValueError, match="--resolution_schedule must end at the target size 32"):
        run(tiny_vit, tiny_data, tmp_path / "a", "--resolution_schedule", "16", "24")
    with pytest.raises(ValueError, match=r"must end at the target size 48 \(--image_size\), got \[16, 32\]"):
        run(tiny_vit, tiny_data, tmp_path / "b", "--image_size", "48", "--resolution_schedule", "16", "32")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything was written


def test_lora_layers_beyond_the_model_is_refused_at_start(tiny_vit, tiny_data, tmp_path):
    with pytest.raises(ValueError, match=r"--lora_layers must be in 1\.\.2"):
        run(tiny_vit, tiny_data, tmp_path / "a", "--lora_layers", "3")
