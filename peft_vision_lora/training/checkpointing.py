"""Atomic, pickle-free training checkpoints that resume a run exactly.

A checkpoint is ``<output_dir>/checkpoints/checkpoint-<step>/`` holding the trainable weights, the optimizer
state and every process's RNG states as safetensors, and the scheduler, grad scaler and loop position as JSON.
It is written into a hidden temporary folder, fsynced and renamed into place (``peft_vision_lora.io``), so a crash
while saving leaves the previous checkpoints untouched and never a half-written one that ``latest`` could pick.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..io import atomic_path, commit_folder, make_folder, write_json

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META_FILE = "optimizer.json"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
BEST_FILE = "best_model.safetensors"
_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")


@dataclass
class TrainerState:
    """Where the loop stands; enough, with the RNG states, to continue as if never stopped."""

    global_step: int = 0
    epoch: int = 0
    # Batches of ``epoch`` (per process) already trained on: resuming skips exactly these.
    batches_in_epoch: int = 0
    batches_per_epoch: int = 0
    # Best evaluation so far: top-1 accuracy, ties broken by the lower loss.
    best_metric: float | None = None
    best_loss: float | None = None
    best_step: int | None = None
    evaluations_since_best: int = 0  # --early_stopping_patience counts these
    labels: list[str] = field(default_factory=list)
    # Iterable data: each process's stream position (training/stream_data.py), in process order; None for map-style.
    data_state: list[dict[str, Any]] | None = None
    # --time_budget's plan (training/budget.py), kept so that a resumed run trains the same steps and schedule.
    budget: dict[str, Any] | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path) -> TrainerState:
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a training checkpoint: {STATE_FILE} is missing.")
        return cls(**json.loads(path.read_text()))


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first. Temporary folders of interrupted saves are not listed."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _CHECKPOINT_RE.fullmatch(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.fullmatch(p.name).group(1)))


def resolve_checkpoint(output_dir: str | os.PathLike, spec: str) -> Path:
    """The checkpoint named by ``--resume_from_checkpoint``: ``latest`` (in ``output_dir``) or a path."""
    if spec == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: no checkpoint in {checkpoint_root(output_dir)}. "
                "Start without --resume_from_checkpoint, or pass the path of a checkpoint folder."
            )
        return checkpoints[-1]
    folder = Path(spec)
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {spec}: not a checkpoint folder (no {STATE_FILE}).")
    return folder


# ------------------------------------------------------------------------------------------------------ file writing


def _write_json(path: Path, data: Any) -> None:
    write_json(path, data, indent=1)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, path, metadata=metadata)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: nn.Module, path: Path) -> None:
    tensors = load_file(path)
    params = trainable_state_dict(model)
    if set(tensors) != set(params):
        missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise ValueError(
            f"{path} does not match the model being trained: missing {missing[:5]}, unexpected {unexpected[:5]}. "
            "Was it written with a different --method, --preset or --r?"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


# ----------------------------------------------------------------------------------- optimizer and RNG serialisation


def _optimizer_to_files(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    metadata = {
        "python": json.dumps([version, list(mt_state), gauss]),
        "numpy": json.dumps([name, keys.tolist(), pos, has_gauss, cached]),
    }
    return tensors, metadata


def _set_rng_state(path: Path) -> None:
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
        torch.set_rng_state(f.get_tensor("torch"))
        cuda = sorted(k for k in f.keys() if k.startswith("cuda."))  # noqa: SIM118 (safe_open is not iterable)
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([f.get_tensor(k) for k in cuda])
    version, mt_state, gauss = json.loads(metadata["python"])
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------------------------------------------- save / load


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainerState,
    total_limit: int | None = None,
    parts: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write ``checkpoint-<global_step>`` atomically (collective: every process must call it); ``parts`` are the
    tensors of the loop's parts by name (``ema``: ``ema.safetensors``)."""
    root = checkpoint_root(output_dir)
    final = root / f"checkpoint-{state.global_step}"
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        make_folder(tmp)
    accelerator.wait_for_everyone()
    rng_tensors, rng_metadata = _rng_state()
    _write_tensors(tmp / f"rng_{accelerator.process_index}.safetensors", rng_tensors, rng_metadata)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            _write_tensors(tmp / MODEL_FILE, trainable_state_dict(accelerator.unwrap_model(model)))
            optimizer_tensors, optimizer_meta = _optimizer_to_files(optimizer.state_dict())
            _write_tensors(tmp / OPTIMIZER_FILE, optimizer_tensors)
            _write_json(tmp / OPTIMIZER_META_FILE, optimizer_meta)
            _write_json(tmp / SCHEDULER_FILE, scheduler.state_dict())
            for name, tensors in (parts or {}).items():
                _write_tensors(tmp / f"{name}.safetensors", tensors)
            if accelerator.scaler is not None:
                _write_json(tmp / SCALER_FILE, accelerator.scaler.state_dict())
            _write_json(tmp / STATE_FILE, asdict(state))  # last: its presence marks a complete checkpoint
            commit_folder(tmp, final)  # fsynced, umask modes, swapped in: the old copy goes once the new one is in
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator: Accelerator,
    folder: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    parts: Sequence[Any] = (),
    state: TrainerState | None = None,
) -> TrainerState:
    """Restore everything :func:`save_checkpoint` wrote; returns the loop position (``state``: already read from
    ``folder``). Each of ``parts`` (objects with ``name`` and ``load_state_dict``, e.g. the EMA) gets the tensors the
    checkpoint holds for it."""
    state = state or TrainerState.load(folder)
    load_trainable_state_dict(accelerator.unwrap_model(model), folder / MODEL_FILE)
    meta = json.loads((folder / OPTIMIZER_META_FILE).read_text())
    optimizer.load_state_dict(_optimizer_from_files(load_file(folder / OPTIMIZER_FILE), meta))
    scheduler.load_state_dict(json.loads((folder / SCHEDULER_FILE).read_text()))
    for part in parts:
        path = folder / f"{part.name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no {path.name}: it was written by a run without this {part.name}.")
        part.load_state_dict(load_file(path))
    if accelerator.scaler is not None and (folder / SCALER_FILE).is_file():
        accelerator.scaler.load_state_dict(json.loads((folder / SCALER_FILE).read_text()))
    rng_file = folder / f"rng_{accelerator.process_index}.safetensors"
    if not rng_file.is_file():
        raise FileNotFoundError(
            f"{rng_file} is missing: {folder} was saved by fewer processes than this run has "
            f"({accelerator.num_processes}). Resume with the same number of processes."
        )
    _set_rng_state(rng_file)
    return state


def save_best(output_dir: str | os.PathLike, model: nn.Module, *, step: int, metric: float) -> Path:
    """Keep the trainable weights of the best evaluation so far (atomic file replace; main process only)."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / BEST_FILE
    with atomic_path(path) as tmp:
        _write_tensors(tmp, trainable_state_dict(model), {"step": str(step), "metric": repr(metric)})
    return path


def best_model_path(output_dir: str | os.PathLike) -> Path:
    return checkpoint_root(output_dir) / BEST_FILE


def stop_message(what: str, state: TrainerState, output_dir: Path, resume: Path | None, *, fp16: bool) -> str:
    """Why a run stopped at the coming step, and how to continue from its last good checkpoint."""
    where = f"{what} at step {state.global_step + 1} (epoch {state.epoch}); stopped without applying it."
    advice = "lower --learning_rate" + (" or use --bf16 instead of --fp16" if fp16 else "")
    last = (list_checkpoints(output_dir) or [resume])[-1]
    if last is None:
        return f"{where} No checkpoint yet: {advice}."
    return f"{where} The last good checkpoint is {last}: {advice} and continue with --resume_from_checkpoint latest."
