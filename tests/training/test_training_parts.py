"""The parts of the loop on their own: parameter groups, data order, metric modules, checkpoints, dataset checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from transformers import CLIPConfig, CLIPForImageClassification

from peft_vision_lora.evaluation.metrics import compute_metrics, load_metric
from peft_vision_lora.processing import resize_position_embeddings
from peft_vision_lora.testing import TINY_VIT
from peft_vision_lora.training import ModelArguments
from peft_vision_lora.training import checkpointing as ckpt
from peft_vision_lora.training.data import check_same_classes, choose_eval_splits, class_names
from peft_vision_lora.training.model import build_training_model, enable_gradient_checkpointing, merged_adapters
from peft_vision_lora.training.optim import (
    MAX_FLOOR_EPOCHS,
    StepPlan,
    build_optimizer,
    build_scheduler,
    parameter_groups,
    plan_steps,
)
from peft_vision_lora.training.sampler import EpochShuffleSampler

LABELS = ["red", "green", "blue"]


def _names(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_weight_decay_only_on_weight_matrices(tiny_vit):
    model = build_training_model(ModelArguments(method="full"), tiny_vit, LABELS)
    groups = {g["name"]: g for g in parameter_groups(model, learning_rate=1e-4, weight_decay=0.05, head_lr=1e-2)}
    decayed = _names(model, groups["backbone"]["params"])
    not_decayed = _names(model, groups["backbone_no_decay"]["params"])
    assert "vit.layers.0.attention.q_proj.weight" in decayed
    assert "vit.embeddings.patch_embeddings.projection.weight" in decayed  # a conv kernel
    for name in (
        "vit.embeddings.cls_token",
        "vit.embeddings.position_embeddings",
        "vit.layers.0.attention.q_proj.bias",
        "vit.layers.0.layernorm_before.weight",
        "vit.layernorm.weight",
    ):
        assert name in not_decayed
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 0.05
    assert _names(model, groups["head"]["params"]) == {"classifier.weight"}
    assert _names(model, groups["head_no_decay"]["params"]) == {"classifier.bias"}
    assert groups["head"]["lr"] == 1e-2 and groups["backbone"]["lr"] == 1e-4
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_lora_groups_hold_only_trainable_parameters(tiny_vit):
    model = build_training_model(ModelArguments(r=4), tiny_vit, LABELS)
    groups = {g["name"]: g for g in parameter_groups(model, learning_rate=1e-3, weight_decay=0.01)}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set().union(*(_names(model, g["params"]) for g in groups.values())) == trainable
    assert all(".lora_" in n for n in _names(model, groups["backbone"]["params"]))
    assert "backbone_no_decay" not in groups  # LoRA factors are all matrices
    assert all("classifier" in n for n in _names(model, groups["head"]["params"]))


def test_linear_probe_trains_the_head_only(tiny_vit):
    model = build_training_model(ModelArguments(method="linear"), tiny_vit, LABELS)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}


def test_resized_position_embeddings_equal_interpolation_at_every_forward(tiny_vit):
    vit = build_training_model(ModelArguments(method="full"), tiny_vit, LABELS)
    clip = CLIPForImageClassification(CLIPConfig(vision_config=TINY_VIT, num_labels=3))
    pixel_values = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    for model in (vit.eval(), clip.eval()):
        resized = resize_position_embeddings(model, 48).eval()
        assert (getattr(resized.config, "vision_config", None) or resized.config).image_size == 48
        torch.testing.assert_close(
            resized(pixel_values=pixel_values).logits,
            model(pixel_values=pixel_values, interpolate_pos_encoding=True).logits,
        )


def test_cosine_schedule_with_warmup(tiny_vit):
    model = build_training_model(ModelArguments(method="linear"), tiny_vit, LABELS)
    optimizer = build_optimizer(model, learning_rate=1.0, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, "cosine", total_steps=10, num_warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[3:] == sorted(lrs[3:], reverse=True) and lrs[-1] < 0.05


def test_run_length_in_steps_and_epochs():
    def plan(batches, **options):
        defaults = {"gradient_accumulation_steps": 1, "num_train_epochs": 3, "max_steps": 0, "min_steps": 0}
        return plan_steps(batches, **{**defaults, **options})

    assert plan(10) == StepPlan(batches_per_epoch=10, steps_per_epoch=10, total_steps=30, num_epochs=3)
    assert plan(10).reason == "epochs"
    # Accumulation: 11 batches make 6 optimizer steps (the last one short).
    accumulated = plan(11, gradient_accumulation_steps=2)
    assert (accumulated.steps_per_epoch, accumulated.total_steps) == (6, 18)
    # The floor for small datasets: 100 steps of a 25-batch epoch are 4 epochs...
    floored = plan(25, min_steps=100)
    assert (floored.total_steps, floored.num_epochs, floored.epochs, floored.reason) == (100, 4, 4.0, "floor")
    # ... but it never goes past MAX_FLOOR_EPOCHS: a 4-batch epoch gets 5 epochs (20 steps), not 25.
    capped = plan(4, min_steps=100)
    assert (capped.total_steps, capped.num_epochs, capped.reason) == (4 * MAX_FLOOR_EPOCHS, MAX_FLOOR_EPOCHS, "floor")
    assert plan(4, num_train_epochs=8, min_steps=100).total_steps == 32  # more epochs asked: no floor
    # --max_steps wins over both; a stream of unknown length has no epochs.
    assert plan(4, max_steps=7, min_steps=100).total_steps == 7
    stream = plan(0, max_steps=50)
    assert (stream.total_steps, stream.num_epochs, math.isnan(stream.epochs)) == (50, 1, True)


def test_eval_split_selects_and_test_is_only_watched():
    splits = dict.fromkeys(("train", "validation", "test"))
    assert choose_eval_splits(splits, "epoch") == ("validation", "test")
    assert choose_eval_splits({"train": 0, "test": 0}, "steps") == ("test", None)
    assert choose_eval_splits(splits, "no") == (None, "test")
    assert choose_eval_splits({"train": 0}, "epoch") == (None, None)


def test_data_order_depends_on_seed_and_epoch_only():
    sampler = EpochShuffleSampler(50, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == list(range(50)) and first != second
    replay = EpochShuffleSampler(50, seed=3)
    replay.set_epoch(1)
    assert list(replay) == second


def test_gradient_checkpointing_recomputes_and_reaches_lora_weights(tiny_vit, pixel_values):
    def grads(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
        torch.manual_seed(0)
        model = build_training_model(ModelArguments(r=4), tiny_vit, LABELS)
        with torch.no_grad():  # LoRA B starts at zero, which would make every LoRA A gradient zero too
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        calls = []
        # Layers checkpoint their forward, so a hook inside the layer sees the recomputation in backward.
        model.get_base_model().vit.layers[0].attention.register_forward_hook(lambda *_: calls.append(1))
        model(pixel_values=pixel_values).logits.sum().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, len(calls)

    plain, plain_calls = grads(False)
    checkpointed, checkpointed_calls = grads(True)
    assert (plain_calls, checkpointed_calls) == (1, 2)  # the layer really ran again in backward
    lora = [n for n in checkpointed if ".lora_" in n]
    assert lora and all(checkpointed[n] is not None and checkpointed[n].abs().sum() > 0 for n in lora)
    for name, grad in checkpointed.items():
        torch.testing.assert_close(grad, plain[name])


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_merged_adapters_run_plain_layers_and_restore_the_frozen_weights_bit_for_bit(tiny_vit, pixel_values, use_dora):
    torch.manual_seed(0)
    model = build_training_model(ModelArguments(r=4, use_dora=use_dora), tiny_vit, LABELS).eval()
    with torch.no_grad():  # a trained adapter: B non-zero, so merging really changes the frozen weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        unmerged = model(pixel_values=pixel_values).logits
    q_proj = model.get_base_model().vit.layers[0].attention.q_proj
    lora_calls = []
    q_proj.lora_A["default"].register_forward_hook(lambda *_: lora_calls.append(1))
    with merged_adapters(model), torch.no_grad():
        assert q_proj.merged
        assert not torch.equal(
            q_proj.base_layer.weight, before["base_model.model.vit.layers.0.attention.q_proj.base_layer.weight"]
        )
        merged = model(pixel_values=pixel_values).logits
    assert lora_calls == []  # the LoRA branch did not run: the plain layer did its work
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert not q_proj.merged
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name  # unmerging alone would leave rounding in the base weights
    with pytest.raises(RuntimeError, match="inside"), merged_adapters(model):
        raise RuntimeError("inside")
    assert not q_proj.merged and all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_metric_modules_load_by_path_and_agree_with_numpy():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(200, 7)).astype(np.float32))
    refs = torch.from_numpy(rng.integers(0, 7, 200))
    metrics = compute_metrics(logits, refs, [f"c{i}" for i in range(7)])
    top5 = np.argsort(-logits.numpy(), axis=1)[:, :5]
    predictions = logits.argmax(1).numpy()
    assert metrics["top1_accuracy"] == pytest.approx((predictions == refs.numpy()).mean())
    assert metrics["top5_accuracy"] == pytest.approx((top5 == refs.numpy()[:, None]).any(1).mean())
    assert metrics["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, refs).item(), rel=1e-6)
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == 200 and np.trace(matrix) == (predictions == refs.numpy()).sum()
    expected = {f"c{i}": matrix[i, i] / matrix[i].sum() for i in range(7)}
    assert metrics["per_class_accuracy"] == pytest.approx(expected)
    assert load_metric("top_k_accuracy").name == "top_k_accuracy"
    with pytest.raises(FileNotFoundError, match="No metric module 'f1'"):
        load_metric("f1")


def test_metrics_with_few_classes_skip_trivial_top5_and_mark_empty_classes():
    metrics = compute_metrics(torch.eye(3)[[0, 1, 1]], torch.tensor([0, 1, 0]), ["a", "b", "c"])
    assert "top5_accuracy" not in metrics
    assert metrics["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": None}
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]


# -------------------------------------------------------------------------------------------------------- checkpoints


def _training_objects(tiny_vit):
    model = build_training_model(ModelArguments(r=4), tiny_vit, LABELS)
    optimizer = build_optimizer(model, learning_rate=1e-2, weight_decay=0.01)
    scheduler = build_scheduler(optimizer, "cosine", total_steps=10, num_warmup_steps=1)
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler, pixel_values):
    model(pixel_values=pixel_values).logits.square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()


def test_checkpoint_restores_weights_optimizer_schedule_and_rng(tiny_vit, tmp_path, pixel_values):
    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = _training_objects(tiny_vit)
    _step(model, optimizer, scheduler, pixel_values)
    state = ckpt.TrainerState(global_step=1, batches_in_epoch=1, batches_per_epoch=5, labels=LABELS)
    folder = ckpt.save_checkpoint(
        accelerator, tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, state=state
    )
    expected_draw = torch.rand(3)
    _step(model, optimizer, scheduler, pixel_values)
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    model2, optimizer2, scheduler2 = _training_objects(tiny_vit)
    torch.manual_seed(1234)  # anything: the checkpoint's RNG state must win
    restored = ckpt.load_checkpoint(accelerator, folder, model=model2, optimizer=optimizer2, scheduler=scheduler2)
    assert restored == state
    torch.testing.assert_close(torch.rand(3), expected_draw, rtol=0, atol=0)
    _step(model2, optimizer2, scheduler2, pixel_values)
    for name, param in model2.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, expected[name], rtol=0, atol=0)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert not any(p.suffix in (".pt", ".bin", ".pkl") for p in folder.iterdir())  # nothing to unpickle


def test_crash_while_saving_leaves_previous_checkpoint_intact(tiny_vit, tmp_path, monkeypatch, pixel_values):
    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = _training_objects(tiny_vit)
    save = lambda step: ckpt.save_checkpoint(  # noqa: E731
        accelerator,
        tmp_path,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        state=ckpt.TrainerState(global_step=step, labels=LABELS),
        total_limit=1,
    )
    first = save(1)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    _step(model, optimizer, scheduler, pixel_values)

    real_write_json = ckpt._write_json

    def dies_on_state_file(path, data):
        if path.name == ckpt.STATE_FILE:
            raise KeyboardInterrupt("killed while saving")
        real_write_json(path, data)

    monkeypatch.setattr(ckpt, "_write_json", dies_on_state_file)
    with pytest.raises(KeyboardInterrupt):
        save(2)
    assert ckpt.list_checkpoints(tmp_path) == [first]
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert sorted(p.name for p in ckpt.checkpoint_root(tmp_path).iterdir()) == ["checkpoint-1"]

    # A save killed outright (no cleanup) leaves a hidden folder that "latest" never picks.
    partial = ckpt.checkpoint_root(tmp_path) / ".checkpoint-2.tmp"
    partial.mkdir()
    (partial / ckpt.MODEL_FILE).write_bytes(b"truncated")
    assert ckpt.resolve_checkpoint(tmp_path, "latest") == first
    monkeypatch.undo()
    second = save(2)
    assert ckpt.list_checkpoints(tmp_path) == [second]  # total_limit=1 rotated the first one out, after the save
    assert json.loads((second / ckpt.STATE_FILE).read_text())["global_step"] == 2


def test_resume_requires_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        ckpt.resolve_checkpoint(tmp_path, "latest")
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        ckpt.resolve_checkpoint(tmp_path, str(tmp_path))


# ---------------------------------------------------------------------------------------------------- dataset checks


def _split(labels: list[int], names=("a", "b")) -> Dataset:
    features = Features({"image": Value("string"), "label": ClassLabel(names=list(names))})
    return Dataset.from_dict({"image": ["x.png"] * len(labels), "label": labels}, features=features)


def test_dataset_checks_name_the_problem():
    assert class_names(DatasetDict(train=_split([0, 1])), "d") == ["a", "b"]
    with pytest.raises(ValueError, match="'test' split of d is empty"):
        class_names(DatasetDict(train=_split([0, 1]), test=_split([])), "d")
    with pytest.raises(ValueError, match=r"label value\(s\) \[-1\] outside the 2 classes"):
        class_names(DatasetDict(train=_split([0, 1, -1])), "d")
    with pytest.raises(ValueError, match="'validation' split of d has classes"):
        class_names(DatasetDict(train=_split([0]), validation=_split([0], names=("a", "c"))), "d")
    with pytest.raises(ValueError, match="no 'train' split"):
        class_names(DatasetDict(test=_split([0])), "d")


def test_resumed_classes_must_match():
    check_same_classes(["a", "b"], ["a", "b"], "ckpt")
    with pytest.raises(ValueError, match=r"only in the dataset: \['c'\]; only in the checkpoint: \['b'\]"):
        check_same_classes(["a", "c"], ["a", "b"], "ckpt")
    with pytest.raises(ValueError, match="different order"):
        check_same_classes(["b", "a"], ["a", "b"], "ckpt")
