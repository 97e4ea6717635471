"""Which mixed precision a run uses: the flags, else the launcher, else bf16 where the hardware computes it natively.

bf16 autocast runs matmuls and convolutions in bfloat16 while the weights, their gradients and the optimizer state
stay float32 (LoRA, head and, under ``--method full``, every weight). Where the hardware has bf16 units (Ampere and
newer GPUs; CPUs with AVX-512 BF16 or AMX) it reached the same accuracy in fewer seconds in our benchmarks
(``benchmarks/RESULTS.md``), so it is the default there; elsewhere it would be emulated, slower than fp32.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import ProjectConfiguration, parse_flag_from_env

from .arguments import TrainingArguments


def launch_device() -> torch.device:
    """The device the Accelerator is about to use: its process state (a shared singleton), built as it builds it."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matmuls in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # Private but stable helpers (torch >= 2.3); a torch without them gets fp32, the safe choice.
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_mixed_precision(args: TrainingArguments, device: torch.device) -> str:
    """``"bf16"``, ``"fp16"`` or ``"no"`` for Accelerate.

    ``--bf16`` / ``--fp16`` decide when given; otherwise ``accelerate launch --mixed_precision`` (or its config file)
    does, as in every Accelerate script; run directly, bf16 is used where :func:`native_bf16` holds.
    """
    if args.fp16:
        return "fp16"
    if args.bf16 is not None:
        return "bf16" if args.bf16 else "no"
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher:
        return launcher.lower()
    return "bf16" if native_bf16(device) else "no"


def build_accelerator(args: TrainingArguments, output_dir: Path) -> Accelerator:
    """The run's Accelerator: its mixed precision, gradient accumulation, trackers and global-batch data loading."""
    return Accelerator(
        mixed_precision=resolve_mixed_precision(args, launch_device()),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        # The dataloader yields global batches and each process takes its slice: every step sees the same samples
        # for any number of processes, and so the result is the same (up to float reduction order).
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
    )


def end_processes(accelerator: Accelerator) -> None:
    """End the run's trackers and process group, then let gloo's worker threads finish before the model is freed.

    A finished collective's work object is freed by a gloo worker thread, which needs the GIL to drop the Python
    tensors it held; if the DDP model (whose reducer owns the process group) is freed first, its destructor joins
    those threads while holding the GIL, and the process hangs at exit. A short pause lets them finish first.
    """
    accelerator.end_training()
    if accelerator.num_processes > 1:
        time.sleep(0.2)
