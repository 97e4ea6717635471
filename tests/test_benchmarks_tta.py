"""``benchmarks/time_to_accuracy.py --quick`` runs the whole matrix machinery and reports a consistent table."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_accuracy.py"
RECIPES = ["previous", "default", "stock", "hand-loop"]


@pytest.mark.slow
def test_time_to_accuracy_quick(tmp_path):
    out = tmp_path / "tta.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {row["recipe"]: row for row in result["rows"]}
    assert list(rows) == RECIPES and all(row["dataset"] == "synthetic" for row in rows.values())
    best = max(row["top1_mean"] for row in rows.values())
    for recipe, row in rows.items():
        assert "error" not in row, row
        (run,) = result["runs"]["synthetic"][recipe]
        curve = run["curve"]
        total, every = (
            run["total_steps"],
            math.ceil(run["total_steps"] / 4),
        )  # at most 4 evaluations, the last at the end
        assert [p["step"] for p in curve] == sorted({*range(every, total + 1, every), total})
        assert all(a["train_s"] < b["train_s"] for a, b in zip(curve, curve[1:]))
        assert curve[-1]["train_s"] <= run["train_s"] + 0.01 < run["run_s"]  # the run also loads data and the model
        assert row["top1_mean"] == run["final_top1"] == curve[-1]["top1"]  # no validation split: the last model
        first = next((p["train_s"] for p in curve if p["top1"] >= 0.9 * best), None)
        assert row["s_to_90"] == first
        images = run["total_steps"] * run["global_batch_size"]
        assert run["images_per_s"] == pytest.approx(images / run["train_s"], rel=1e-6)
        assert 0 <= run["data_wait_fraction"] < 1
    assert rows["default"]["top1_mean"] >= 0.9  # the colours are learnt: chance is 1/3
    assert rows["stock"]["mixed_precision"] == rows["hand-loop"]["mixed_precision"] == "no"
    assert result["machine"]["cpu_flags"] is not None
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| dataset |"))
    assert "s to 90%" in lines[header] and "Machine:" in proc.stdout
    assert [line.split("|")[2].strip() for line in lines[header + 2 : header + 6]] == RECIPES
