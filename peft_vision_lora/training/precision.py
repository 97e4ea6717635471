"""Which mixed precision a run uses: the flags, else the launcher, else bf16 where the hardware computes it natively.

bf16 autocast runs matmuls and convolutions in bfloat16 while the weights, their gradients and the optimizer state
stay float32 (LoRA, head and, under ``--method full``, every weight). Where the hardware has bf16 units (Ampere and
newer GPUs; CPUs with AVX-512 BF16 or AMX) it reached the same accuracy in fewer seconds in our benchmarks
(``benchmarks/RESULTS.md``), so it is the default there; elsewhere it would be emulated, slower than fp32.
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

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
