"""``benchmarks/time_to_accuracy.py --quick`` runs from a clean checkout and reports a consistent table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_accuracy.py"


@pytest.mark.slow
def test_time_to_accuracy_quick(tmp_path):
    out = tmp_path / "tta.json"
    recipes = ["default", "linear"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "time_to_accuracy" and result["target"] == 0.9
    rows = {row["name"]: row for row in result["rows"]}
    assert list(rows) == recipes
    for row in rows.values():
        assert "error" not in row, row
        curve = row["curve"]
        # 48 training images at batch 16 for 2 epochs, evaluated every 3 steps: after each epoch.
        assert [point["step"] for point in curve] == [3, 6]
        assert 0 < curve[0]["train_s"] < curve[1]["train_s"] <= row["train_s"]
        assert row["final_top1"] == curve[-1]["top1"]  # no validation split: the final model is the last one
        first = next((point for point in curve if point["top1"] >= 0.9), None)
        assert row["time_to_target_s"] == (first and first["train_s"])
        assert row["steps_to_target"] == (first and first["step"])
        # Throughput counts every training second (the probe's feature caching too); the best window only training.
        assert row["images_per_s"] == pytest.approx(6 * 16 / row["train_s"], rel=1e-6)
        assert row["best_window_images_per_s"] == pytest.approx(3 * 16 / (curve[1]["train_s"] - curve[0]["train_s"]))
    assert rows["default"]["final_top1"] >= 0.9  # the colours are learnt: chance is 1/3
    # The probe trains on cached features: its one backbone pass is counted in its training time.
    assert 0 < result["runs"]["linear"][0]["feature_cache_s"] <= rows["linear"]["curve"][0]["train_s"]

    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| recipe |"))
    assert "s to 90%" in lines[header] and "Machine:" in proc.stdout
    printed = [line.split("|")[1].strip() for line in lines[header + 2 : header + 2 + len(recipes)]]
    assert printed == recipes
