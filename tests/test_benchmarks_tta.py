"""``benchmarks/time_to_accuracy.py --quick``: whole commands of ours and of the stock hand loop, timed side by side,
and a --time_budget run given the hand loop's measured seconds."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_accuracy.py"
RECIPES = ["default", "stock-loop-40", "budget=2x:stock-loop-40"]


@pytest.mark.slow
def test_time_to_accuracy_quick(tmp_path):
    out = tmp_path / "tta.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--evaluations", "3", "--recipes", *RECIPES]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {row["recipe"]: row for row in result["rows"]}
    assert list(rows) == RECIPES and all(row["dataset"] == "synthetic" for row in rows.values())
    runs = {recipe: result["runs"]["synthetic"][recipe][0] for recipe in RECIPES}
    for recipe, run in runs.items():
        assert "error" not in run, (recipe, run)
        curve = run["curve"]
        assert all(a["train_s"] < b["train_s"] for a, b in zip(curve, curve[1:]))
        assert curve[-1]["train_s"] <= run["train_s"] + 0.01 < run["run_s"]  # the command also loads data and model
        assert rows[recipe]["top1_mean"] == run["final_top1"] == curve[-1]["top1"]  # no validation: the last model
        images = run["total_steps"] * run["global_batch_size"]
        assert run["images_per_s"] == pytest.approx(images / run["train_s"], rel=1e-6)
    # Ours: 3 evaluations requested, the last at the end; the two added ones are left out of the whole-command time.
    ours = runs["default"]
    total, every = ours["total_steps"], math.ceil(ours["total_steps"] / 3)
    assert [p["step"] for p in ours["curve"]] == sorted({*range(every, total + 1, every), total})
    assert sum(ours["phases"][k] for k in ours["phases"] if k != "total_s") == pytest.approx(
        ours["phases"]["total_s"], rel=0.02
    )
    # The hand loop evaluates after each of its 40 epochs, and that is part of the command a user waits for.
    assert len(runs["stock-loop-40"]["curve"]) == 40 and runs["stock-loop-40"]["mixed_precision"] == "no"
    # The budget run was given twice the hand loop's seconds and planned its steps to end inside them.
    budget = runs["budget=2x:stock-loop-40"]["time_budget"]
    assert budget["budget_s"] == round(2 * runs["stock-loop-40"]["run_s"])
    assert runs["budget=2x:stock-loop-40"]["total_steps"] == budget["total_steps"] >= 3
    assert rows["default"]["top1_mean"] >= 0.9  # the colours are learnt: chance is 1/3
    assert result["machine"]["cpu_flags"] is not None
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| dataset |"))
    assert "run s" in lines[header] and "Machine:" in proc.stdout
    assert [line.split("|")[2].strip() for line in lines[header + 2 : header + 5]] == RECIPES


def test_two_class_640_has_the_shape_of_a_small_user_set(tmp_path, monkeypatch):
    """Two classes, a few hundred large photos, train and validation and no test split (the validation top-1 is
    what the benchmark reports for it)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import time_to_accuracy
    from PIL import Image

    if not time_to_accuracy.FLOWERS12.is_dir():
        pytest.skip(f"{time_to_accuracy.FLOWERS12} is absent (the shared photos)")
    out = time_to_accuracy.make_two_class_640(tmp_path / "two")
    counts = {
        split: {d.name: len(list(d.iterdir())) for d in (out / split).iterdir()} for split in ("train", "validation")
    }
    assert counts == {"train": {"composite": 120, "buttercup": 60}, "validation": {"composite": 40, "buttercup": 20}}
    assert not (out / "test").exists()
    with Image.open(next((out / "validation" / "buttercup").iterdir())) as image:
        assert image.size == (640, 640) and image.format == "JPEG"
    assert time_to_accuracy.IMAGE_SIZES["two-class-640"] == 224


def test_write_image_folder_keeps_every_image_and_label(tmp_path, monkeypatch):
    """fashion-mnist-1k goes to disk as an image folder, which the stock hand loop reads: nothing lost or relabelled,
    and a class name with a slash becomes one folder."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import numpy as np
    import time_to_accuracy
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage

    names = ["T-shirt/top", "Trouser"]
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    pixels = lambda v: PILImage.fromarray(np.full((28, 28), v, dtype=np.uint8))  # noqa: E731
    data = DatasetDict(
        train=Dataset.from_dict({"image": [pixels(10), pixels(20), pixels(200)], "label": [0, 0, 1]}, features),
        test=Dataset.from_dict({"image": [pixels(30), pixels(220)], "label": [0, 1]}, features),
    )
    out = time_to_accuracy.write_image_folder(data, tmp_path / "fashion")
    found = {
        (split, folder.name, int(np.asarray(PILImage.open(f))[0, 0]))
        for split in ("train", "test")
        for folder in (out / split).iterdir()
        for f in folder.iterdir()
    }
    assert found == {
        ("train", "T-shirt-top", 10), ("train", "T-shirt-top", 20), ("train", "Trouser", 200),
        ("test", "T-shirt-top", 30), ("test", "Trouser", 220),
    }  # fmt: skip
