"""`peft-vision-lora evaluate`: a run's metrics on any split, plus the grid of the most confident mistakes."""

from __future__ import annotations

import json
import shutil

import PIL.Image
import pytest
import torch
from helpers.training import make_imagefolder

import peft_vision_lora as pvl
from peft_vision_lora.cli import main
from peft_vision_lora.evaluation.mistakes import most_confident_mistakes, plot_mistakes


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory):
    from helpers.training import make_tiny_vit

    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    model = pvl.build_model(make_tiny_vit(root / "vit"), ["red", "green", "blue"], init_lora_weights=False)
    return pvl.save_pretrained(model, root / "adapter")


def test_most_confident_mistakes_come_first():
    logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    references = torch.tensor([0, 0, 1, 0])
    mistakes = most_confident_mistakes(logits, references, ["cat", "dog"], count=5)
    assert [(m.index, m.true, m.predicted) for m in mistakes] == [
        (3, "cat", "dog"),
        (2, "dog", "cat"),
        (1, "cat", "dog"),
    ]
    assert mistakes[0].score == pytest.approx(torch.tensor([0.0, 5.0]).softmax(-1)[1].item())
    assert len(most_confident_mistakes(logits, references, ["cat", "dog"], count=1)) == 1


def test_mistakes_grid_and_its_empty_case(tmp_path):
    mistakes = most_confident_mistakes(torch.tensor([[0.0, 2.0]] * 5), torch.zeros(5, dtype=torch.long), ["a", "b"])
    path = plot_mistakes(mistakes, lambda i: PIL.Image.new("RGB", (30, 20), "red"), tmp_path / "m.png", num_samples=5)
    with PIL.Image.open(path) as image:
        assert image.width > image.height  # 4 columns, 2 rows
    empty = plot_mistakes([], lambda i: None, tmp_path / "none.png", num_samples=5)
    assert empty.stat().st_size > 0


def test_evaluate_command_writes_metrics_confusion_and_mistakes(adapter, tmp_path, capsys):
    data = make_imagefolder(tmp_path / "colours", per_class={"train": 2, "test": 4})
    run = tmp_path / "run"
    shutil.copytree(adapter, run)
    (run / "metrics.json").write_text(json.dumps({"method": "lora", "labels": ["red", "green", "blue"]}))
    assert main(["evaluate", str(run), "--dataset", str(data), "--num_mistakes", "3"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "lora"  # what the training run recorded stays
    test = metrics["test"]
    assert test["num_samples"] == 12 and printed["top1_accuracy"] == test["top1_accuracy"]
    assert set(test["per_class_accuracy"]) == {"red", "green", "blue"} and len(test["confusion_matrix"]) == 3
    assert "top5_accuracy" not in test  # 3 classes: top-5 would be trivially 1
    assert (run / "confusion_matrix.png").stat().st_size > 0 and (run / "mistakes.png").stat().st_size > 0


def test_dataset_classes_are_matched_to_the_model_labels_by_name(adapter, tmp_path):
    from peft_vision_lora.evaluation.folder import evaluate_folder

    subset = make_imagefolder(tmp_path / "two", classes=("blue", "red"), per_class={"train": 1, "test": 3})
    metrics = evaluate_folder(adapter, subset, output_dir=tmp_path / "out")
    # Rows of the confusion matrix follow the model's labels (red, green, blue); green has no samples.
    assert [sum(row) for row in metrics["confusion_matrix"]] == [3, 0, 3]
    unknown = make_imagefolder(tmp_path / "cats", classes=("cat", "red"), per_class={"train": 1, "test": 1})
    with pytest.raises(ValueError, match=r"does not know: \['cat'\]"):
        evaluate_folder(adapter, unknown, output_dir=tmp_path / "out2")
    assert main(["evaluate", str(adapter), "--dataset", str(subset), "--split", "validation"]) == 1
