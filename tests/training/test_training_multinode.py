"""Two machines on this one: two ``accelerate launch`` launchers (one CPU process each, gloo) train as one run, and a
launcher that asked for several machines without a distributed mode stops at start."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers.training import ONE_PROCESS_FLAGS, accelerate_launcher, adapter_difference, free_port

from peft_vision_lora.training.launch import LaunchError, check_launch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train.py"
ENV = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


def machine(rank: int, port: int, *, multi_gpu: bool = True) -> list[str]:
    """The launcher of machine ``rank`` of 2, one process each, meeting at 127.0.0.1:``port``."""
    flags = ["--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2"]
    flags += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    return [*accelerate_launcher(), *(["--multi_gpu"] if multi_gpu else []), *flags, str(EXAMPLE)]


@pytest.mark.slow
def test_two_launchers_train_as_one_run_equal_to_one_process(tiny_vit, tiny_data, one_process_run, tmp_path):
    common = ["--model", str(tiny_vit), "--dataset", str(tiny_data), *ONE_PROCESS_FLAGS]
    two, port = tmp_path / "two-machines", free_port()
    flags = [*common, "--per_device_train_batch_size", "2", "--output_dir", str(two)]
    launchers = [
        subprocess.Popen(
            [*machine(rank, port), *flags], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [launcher.communicate(timeout=300) for launcher in launchers]
    for launcher, (_, stderr) in zip(launchers, outputs):
        assert launcher.returncode == 0, stderr[-3000:]
    one_folder, one = one_process_run

    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and one["num_processes"] == 1  # the world size is 2: one run, not two
    assert metrics["global_train_batch_size"] == one["global_train_batch_size"] == 4
    assert adapter_difference(one_folder, two) <= 1e-5
    assert metrics["test"]["loss"] == pytest.approx(one["test"]["loss"], abs=1e-5)


@pytest.mark.slow
def test_a_launcher_for_two_machines_without_a_distributed_mode_stops_at_start(tiny_vit, tiny_data, tmp_path):
    out = tmp_path / "alone"
    command = [*machine(0, free_port(), multi_gpu=False), "--model", str(tiny_vit), "--dataset", str(tiny_data)]
    result = subprocess.run(
        [*command, "--max_steps", "1", "--output_dir", str(out)], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "this run has one process" in result.stderr and "Add --multi_gpu to every launcher" in result.stderr
    assert not out.exists()


def test_launch_check_reads_what_the_launcher_exported():
    launched = {"ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(LaunchError, match="rendezvous at 10.0.0.1:29500"):
        check_launch(1, launched)
    check_launch(2, launched)  # a real process group
    check_launch(1, {**launched, "WORLD_SIZE": "1"})  # torchrun with one process
    check_launch(1, {"MASTER_ADDR": "10.0.0.1"})  # not started by accelerate launch
    check_launch(1, {"ACCELERATE_MIXED_PRECISION": "no"})  # accelerate launch on one machine, one process
