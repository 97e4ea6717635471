"""The mixed precision a run uses: flags first, then ``accelerate launch``, then bf16 where the hardware has it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peft_vision_lora.training import parse_args, train
from peft_vision_lora.training.arguments import TrainingArguments, to_command
from peft_vision_lora.training.precision import native_bf16, resolve_mixed_precision

CPU = torch.device("cpu")


@pytest.fixture
def no_launcher(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


@pytest.fixture(params=[True, False], ids=["bf16-cpu", "fp32-only-cpu"])
def cpu_has_bf16(request, monkeypatch) -> bool:
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: request.param)
    return request.param


def test_default_is_bf16_exactly_where_the_cpu_computes_it(no_launcher, cpu_has_bf16):
    expected = "bf16" if cpu_has_bf16 else "no"
    assert resolve_mixed_precision(TrainingArguments("out"), CPU) == expected


def test_flags_win_over_hardware_and_launcher(monkeypatch, cpu_has_bf16):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_mixed_precision(TrainingArguments("out", bf16=False), CPU) == "no"
    assert resolve_mixed_precision(TrainingArguments("out", fp16=True), CPU) == "fp16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert resolve_mixed_precision(TrainingArguments("out", bf16=True), CPU) == "bf16"


@pytest.mark.parametrize("launcher", ["no", "bf16", "FP16"])
def test_accelerate_launch_choice_is_kept(monkeypatch, cpu_has_bf16, launcher):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    assert resolve_mixed_precision(TrainingArguments("out"), CPU) == launcher.lower()


def test_native_bf16_matches_the_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = set(cpuinfo.read_text().split())
    assert native_bf16(CPU) == bool(flags & {"avx512_bf16", "amx_tile"})


def test_bf16_flag_is_tri_state_and_round_trips():
    base = ["--dataset", "d", "--output_dir", "o"]
    assert parse_args(base)[2].bf16 is None
    assert parse_args([*base, "--bf16"])[2].bf16 is True
    forced = parse_args([*base, "--bf16", "false"])
    assert forced[2].bf16 is False
    command = to_command(*forced)
    assert "--bf16 false" in command
    assert parse_args(command.split()[2:]) == forced


@pytest.mark.parametrize("flag", [[], ["--bf16", "false"]], ids=["default", "forced-fp32"])
def test_run_records_the_precision_it_used(tiny_vit, tiny_data, tmp_path, no_launcher, flag):
    out = tmp_path / "run"
    flags = ["--model", str(tiny_vit), "--dataset", str(tiny_data), "--output_dir", str(out), "--max_steps", "2"]
    metrics = train(*parse_args([*flags, "--disable_tqdm", *flag]))
    expected = "no" if flag else ("bf16" if native_bf16(CPU) else "no")
    assert metrics["mixed_precision"] == expected
    assert json.loads((out / "metrics.json").read_text())["mixed_precision"] == expected
    # LoRA and head weights stay fp32 under autocast: the saved adapter is fp32 either way.
    tensors = load_file(out / "adapter_model.safetensors")
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())
