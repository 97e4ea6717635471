"""PEFT's notebook flow with ``transformers.Trainer``: ``examples/trainer_flow.py`` and its pieces, checked with the
stock loaders (``PeftConfig``/``PeftModel.from_pretrained``, ``AutoModelForImageClassification``, ``pipeline``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate.state import AcceleratorState
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForImageClassification,
    EvalPrediction,
    Trainer,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    pipeline,
)

import peft_vision_lora as pvl
from peft_vision_lora.testing import make_tiny_vit
from peft_vision_lora.training.trainer import (
    EpochCallback,
    LinearProbeHeadCallback,
    TokenDropoutCallback,
    collate_fn,
    collator,
    metrics_for_trainer,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trainer_flow.py"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _colour_folder(root: Path, per_class: dict[str, int], size: int = 40) -> Path:
    """``root/<split>/<class>/*.png``: noisy images whose mean colour gives the class away."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                PIL.Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Trainer sets Accelerate's process-wide state (CPU, no mixed precision); later tests start from a clean one."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trainer-flow")
    return make_tiny_vit(root / "vit"), _colour_folder(root / "colours", {"train": 8, "test": 4})


def _run_example(argv: list[str]) -> dict[str, float]:
    spec = importlib.util.spec_from_file_location("trainer_flow", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
        return module.main(argv)
    finally:
        del sys.modules[spec.name]


def _notebook_reload(folder: Path, labels: list[str]) -> PeftModel:
    """The notebook's inference cell: PeftConfig -> base with the labels -> PeftModel.from_pretrained."""
    config = PeftConfig.from_pretrained(folder)
    base = AutoModelForImageClassification.from_pretrained(
        config.base_model_name_or_path,
        label2id={label: i for i, label in enumerate(labels)},
        id2label=dict(enumerate(labels)),
        ignore_mismatched_sizes=True,
    )
    return PeftModel.from_pretrained(base, folder).eval()


def _check_folders(out: Path, labels: list[str], images: list[PIL.Image.Image], size: int) -> None:
    """Both saved folders hold the trained model: the notebook's reload, ``pvl.load_model`` and the pipeline on
    either folder agree."""
    stock = _notebook_reload(out / "peft", labels)
    assert stock.peft_config["default"].target_modules == {"q_proj", "v_proj"}  # saved under 5.x names
    transform = pvl.ImageTransforms.from_pretrained(out / "adapter")
    pixels = transform({"image": images})["pixel_values"]
    assert pixels.shape[-1] == size
    with torch.no_grad():
        expected = stock(pixel_values=pixels).logits
        ours = pvl.load_model(out / "adapter")(pixel_values=pixels).logits
    assert (ours - expected).abs().max() <= 1e-4
    stock_pipeline = pipeline(
        "image-classification",
        model=str(out / "peft"),
        image_processor=pvl.load_image_processor(out / "adapter"),
        model_kwargs={"id2label": dict(enumerate(labels))},
    )
    for classify in (pipeline("image-classification", model=str(out / "adapter")), stock_pipeline):
        predictions = classify(images, top_k=1)
        assert [p[0]["label"] for p in predictions] == [labels[i] for i in expected.argmax(-1).tolist()]
        assert [p[0]["score"] for p in predictions] == pytest.approx(expected.softmax(-1).amax(-1).tolist(), abs=1e-4)


def test_example_trains_saves_and_reloads_with_stock_loaders(tiny, tmp_path):
    vit, data = tiny
    out = tmp_path / "out"
    flags = ["--use_cpu", "--max_steps", "6", "--per_device_train_batch_size", "8", "--learning_rate", "1e-2"]
    metrics = _run_example(["--model", str(vit), "--dataset", str(data), "--output_dir", str(out), *flags])
    assert metrics["eval_accuracy"] >= 0.9 and {"eval_accuracy_red", "eval_accuracy_blue"} <= metrics.keys()
    assert {p.name for p in (out / "peft").iterdir()} == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    images = [PIL.Image.open(path) for path in sorted((data / "test").glob("*/0.png"))]
    _check_folders(out, ["blue", "green", "red"], images, size=32)


@pytest.mark.slow
@pytest.mark.shared
def test_example_on_the_shared_vit_and_flowers12(shared_vit, flowers12, tmp_path):
    out = tmp_path / "out"
    flags = ["--shots", "2", "--image_size", "56", "--max_eval_samples", "24", "--per_device_train_batch_size", "8"]
    argv = ["--model", str(shared_vit), "--dataset", str(flowers12), "--output_dir", str(out), "--use_cpu"]
    metrics = _run_example([*argv, *flags, "--max_steps", "2", "--eval_strategy", "no"])
    assert 0 <= metrics["eval_accuracy"] <= 1 and metrics["eval_loss"] > 0
    labels = sorted(path.name for path in (flowers12 / "train").iterdir())
    images = [PIL.Image.open(next((flowers12 / "test" / name).iterdir())) for name in labels[:2]]
    _check_folders(out, labels, images, size=224)


# ------------------------------------------------------------------------------------------------------ the pieces


def _trainer(vit: Path, data: Path, out: Path, callbacks: list, **overrides) -> Trainer:
    labels = ["blue", "green", "red"]
    model = AutoModelForImageClassification.from_pretrained(
        vit,
        id2label=dict(enumerate(labels)),
        label2id={k: i for i, k in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]))
    dataset = pvl.load_image_dataset(data)["train"].with_transform(pvl.ImageTransforms.from_pretrained(vit, train=True))
    args = dict(output_dir=str(out), use_cpu=True, report_to="none", save_strategy="no", max_steps=2)
    args.update(remove_unused_columns=False, label_names=["labels"], per_device_train_batch_size=4, **overrides)
    return Trainer(
        lora, TrainingArguments(**args), train_dataset=dataset, data_collator=collate_fn, callbacks=callbacks
    )


def test_token_dropout_callback_drops_tokens_in_training_only(tiny, tmp_path):
    vit, data = tiny
    callback = TokenDropoutCallback(0.5, min_tokens=1)
    trainer = _trainer(vit, data, tmp_path, [callback], gradient_accumulation_steps=2)
    seen: list[tuple[int, int]] = []  # (tokens, draw) of every training forward of the first encoder layer

    def record(layer: torch.nn.Module, args: tuple) -> None:
        seen.append((args[0].shape[1], callback.dropout._batch if layer.training else None))

    trainer.model.get_base_model().vit.layers[0].register_forward_pre_hook(record)
    trainer.train()
    # 16 patches of 8 px in a 32 px image: 8 kept + the class token; a new draw for every micro-batch.
    assert seen == [(9, draw) for draw in range(4)]
    assert callback.dropout is None  # the hook is off after training
    with torch.no_grad():
        trainer.model.eval()(pixel_values=torch.zeros(1, 3, 32, 32))
    assert seen[-1] == (17, None)


def test_linear_probe_callback_fits_the_head_before_the_first_step(tiny, tmp_path):
    vit, data = tiny
    eval_data = pvl.load_image_dataset(data)["train"].with_transform(pvl.ImageTransforms.from_pretrained(vit))
    callback = LinearProbeHeadCallback(eval_data, batch_size=5)
    trainer = _trainer(vit, data, tmp_path, [callback])
    batch = collate_fn([eval_data[i] for i in range(len(eval_data))])

    def accuracy() -> float:
        with torch.no_grad():
            logits = trainer.model.eval()(pixel_values=batch["pixel_values"]).logits
        return (logits.argmax(-1) == batch["labels"]).float().mean().item()

    before = accuracy()
    callback.on_step_begin(trainer.args, TrainerState(), TrainerControl(), model=trainer.model)
    assert callback.train_accuracy == pytest.approx(accuracy()) and callback.train_accuracy > before
    assert callback.train_accuracy == 1.0  # the colour classes are linearly separable in any random feature space
    resumed = LinearProbeHeadCallback(eval_data)
    resumed.on_step_begin(trainer.args, TrainerState(global_step=5), TrainerControl(), model=trainer.model)
    assert resumed.train_accuracy is None  # a resumed run keeps its trained head


def test_linear_probe_callback_runs_once_in_training(tiny, tmp_path):
    vit, data = tiny
    eval_data = pvl.load_image_dataset(data)["train"].with_transform(pvl.ImageTransforms.from_pretrained(vit))
    callback = LinearProbeHeadCallback(eval_data)
    trainer = _trainer(vit, data, tmp_path, [callback], learning_rate=0.0)  # the fitted head stays as fitted
    trainer.train()
    batch = collate_fn([eval_data[i] for i in range(len(eval_data))])
    with torch.no_grad():
        logits = trainer.model.eval()(pixel_values=batch["pixel_values"]).logits
    assert callback.train_accuracy == 1.0 == (logits.argmax(-1) == batch["labels"]).float().mean().item()


def test_epoch_callback_gives_each_epoch_new_augmentations(tiny):
    vit, data = tiny
    transform = pvl.ImageTransforms.from_pretrained(vit, train=True)
    image = PIL.Image.open(next((data / "train" / "red").iterdir()))
    first = transform({"image": [image]})["pixel_values"]
    EpochCallback(transform).on_epoch_begin(None, TrainerState(epoch=1.0), TrainerControl())
    assert transform.epoch == 1
    EpochCallback(transform).on_epoch_begin(None, TrainerState(epoch=2.5), TrainerControl())  # resumed mid-epoch
    assert transform.epoch == 2
    transform.set_epoch(1)
    assert not torch.equal(transform({"image": [image]})["pixel_values"], first)


def test_metrics_and_collate():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    metrics = metrics_for_trainer(["a", "b", "c"])(EvalPrediction(logits, np.array([0, 1, 2, 2])))
    assert metrics == {"accuracy": 0.75, "accuracy_a": 1.0, "accuracy_b": 1.0, "accuracy_c": 0.5}
    rows = [{"pixel_values": torch.zeros(3, 28, 28), "labels": torch.tensor(i)} for i in range(2)]
    batch = collate_fn(rows)
    assert batch["pixel_values"].shape == (2, 3, 28, 28) and batch["labels"].tolist() == [0, 1]
    vit = AutoModelForImageClassification.from_config(pvl.testing.tiny_vit_config())
    assert collator(vit, 32)(rows).keys() == {"pixel_values", "labels"}
    assert collator(vit, 48)(rows)["interpolate_pos_encoding"] is True
