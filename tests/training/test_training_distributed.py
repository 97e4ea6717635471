"""Data parallel training with Accelerate: two real CPU processes (gloo) match one process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers.training import ONE_PROCESS_FLAGS, accelerate_launcher, adapter_difference, free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train.py"


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_vit, tiny_data, one_process_run, tmp_path):
    common = ["--model", str(tiny_vit), "--dataset", str(tiny_data), *ONE_PROCESS_FLAGS]
    launch = [
        *accelerate_launcher(),
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
    ]
    two = tmp_path / "two"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*launch, str(EXAMPLE), *common, "--per_device_train_batch_size", "2", "--output_dir", str(two)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The launcher's --mixed_precision no decides the two-process run; the in-process run says it with a flag.
    one, one_metrics = one_process_run

    two_metrics = json.loads((two / "metrics.json").read_text())
    assert two_metrics["num_processes"] == 2 and one_metrics["num_processes"] == 1
    assert two_metrics["mixed_precision"] == one_metrics["mixed_precision"] == "no"
    assert two_metrics["global_train_batch_size"] == one_metrics["global_train_batch_size"] == 4
    # Every sample is evaluated once, although 2 x 5 does not divide the 6 validation and 12 test images.
    assert two_metrics["eval"]["num_samples"] == 6 and two_metrics["test"]["num_samples"] == 12
    assert adapter_difference(one, two) <= 1e-5
    assert two_metrics["test"]["loss"] == pytest.approx(one_metrics["test"]["loss"], abs=1e-5)
    assert two_metrics["eval"]["confusion_matrix"] == one_metrics["eval"]["confusion_matrix"]
