"""What a new user sees first: the page names its task, offers example images, and the results give the accuracy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from accelerate.state import AcceleratorState

from peft_vision_lora.demo import build_app, read_run_results
from peft_vision_lora.evaluation import evaluate_folder
from peft_vision_lora.evaluation.plots import training_curves_figure

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture
def colour_images(tmp_path: Path) -> Path:
    """``root/{train,test}/<colour>/*.png``: flat colours, the classes of the ``colours`` adapter."""
    for split, count in (("train", 1), ("test", 2)):
        for name, rgb in COLOURS.items():
            folder = tmp_path / "colours-data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                PIL.Image.new("RGB", (64, 48), rgb).save(folder / f"{i}.png")
    return tmp_path / "colours-data"


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _component(app, elem_id: str) -> dict | None:
    return next((c for c in app.config["components"] if c.get("props", {}).get("elem_id") == elem_id), None)


def test_evaluate_writes_one_example_per_class_when_the_folder_has_none(tiny_adapters, colour_images, tmp_path):
    out = tmp_path / "evaluated"
    evaluate_folder(tiny_adapters["colours"], colour_images, output_dir=out)
    examples = sorted((out / "examples").iterdir())
    assert [p.name for p in examples] == ["01-blue.jpg", "02-green.jpg", "03-red.jpg"]  # the dataset's class order
    for path, rgb in zip(examples, (COLOURS["blue"], COLOURS["green"], COLOURS["red"])):
        with PIL.Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (64, 48)
            assert np.abs(np.asarray(image, dtype=float).mean(axis=(0, 1)) - rgb).max() < 4

    # The page of a folder with examples offers them instead of saying how to get some.
    shutil.copytree(tiny_adapters["colours"], tmp_path / "colours")
    shutil.copytree(out / "examples", tmp_path / "colours" / "examples")
    app = build_app([tmp_path / "colours"])
    assert _component(app, "pvl-examples") is not None and _component(app, "pvl-no-examples") is None

    # A folder's own examples are never replaced.
    (out / "examples" / "02-green.jpg").unlink()
    evaluate_folder(tiny_adapters["colours"], colour_images, output_dir=out)
    assert [p.name for p in sorted((out / "examples").iterdir())] == ["01-blue.jpg", "03-red.jpg"]


def test_page_title_names_the_task_and_says_how_to_get_examples(tiny_adapters):
    app = build_app([tiny_adapters["colours"]])
    assert app.title == "colours: 3 classes"
    intro = _component(app, "pvl-title")["props"]["value"]
    assert intro == "# colours: 3 classes\n\nClasses: red, green, blue."
    assert _component(app, "pvl-examples") is None
    assert "peft-vision-lora evaluate" in _component(app, "pvl-no-examples")["props"]["value"]
    assert build_app([tiny_adapters["colours"], tiny_adapters["pets"]]).title == "colours · pets"
    assert build_app([tiny_adapters["pets"]], title="Cat or dog?").title == "Cat or dog?"


def test_results_give_the_final_accuracy_or_say_why_there_is_none(tiny_adapters, tmp_path):
    assert read_run_results(tiny_adapters["pets"]).accuracy_message().startswith("No final accuracy")
    folder = shutil.copytree(tiny_adapters["colours"], tmp_path / "colours")
    metrics = {"test": {"top1_accuracy": 0.975, "top5_accuracy": 1.0, "num_samples": 240, "per_class_accuracy": {}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    message = read_run_results(folder).accuracy_message()
    assert message == "**Top-1 accuracy 97.5%** on the test split (240 images, top-5 100.0%)."


def _legend(ax) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def test_curves_without_evaluation_during_training_show_the_final_accuracy():
    log = [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-3} for s in range(1, 11)]
    final = ("test", {"top1_accuracy": 0.975, "top5_accuracy": 1.0})
    accuracy = training_curves_figure(log, final).axes[1]
    assert accuracy.get_title() == "Final accuracy (no evaluation during training)"
    assert _legend(accuracy) == ["test top-1 97.5%", "test top-5 100.0%"]
    assert [tuple(c.get_offsets()[0]) for c in accuracy.collections] == [(10, 0.975), (10, 1.0)]

    nothing = training_curves_figure(log).axes[1]
    assert [t.get_text() for t in nothing.texts] == ["No evaluation during or after training"]

    evaluated = log + [{"step": 5, "eval_top1_accuracy": 0.9, "eval_top5_accuracy": 1.0}]
    during = training_curves_figure(evaluated, final).axes[1]
    assert during.get_title() == "Evaluation accuracy" and _legend(during)[:2] == ["top-1", "top-5"]
