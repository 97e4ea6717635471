"""The contents of ``metrics.json``, assembled from what a finished run measured."""

from __future__ import annotations

from typing import Any

from .checkpointing import TrainerState


def run_results(
    *,
    method: str,
    model: str,
    dataset: str,
    labels: list[str],
    num_processes: int,
    mixed_precision: str,
    global_batch_size: int,
    total_steps: int,
    state: TrainerState,
    runtime_s: float,
    train_s: float,
    data_wait_s: float,
    cache_s: float | None,
    stream: dict[str, Any],
    eval_metrics: dict[str, Any] | None,
    test_metrics: dict[str, Any] | None,
) -> dict[str, Any]:
    """``runtime_s``: training with its evaluations; ``train_s``: training alone, with the linear probe and feature
    cache (``cache_s``, None: no cache); ``data_wait_s``: waiting for batches. ``eval_metrics`` are the validation
    split's and ``test_metrics`` the test split's (None: no such split); ``stream``: a stream's summary."""
    train = {
        "loss": next((e["loss"] for e in reversed(state.log_history) if "loss" in e), None),
        "runtime_s": round(runtime_s, 2),
        "train_s": round(train_s, 3),
        # Share of the training time spent waiting for the next batch (decoding, augmentation).
        "data_wait_fraction": round(data_wait_s / runtime_s, 4) if runtime_s > 0 else 0.0,
        **stream,
    }
    if cache_s is not None:  # the one backbone pass per split, before training started
        train["feature_cache_s"] = round(cache_s, 2)
    results = {
        "method": method,
        "model": model,
        "dataset": dataset,
        "labels": labels,
        "num_processes": num_processes,
        "mixed_precision": mixed_precision,
        "global_train_batch_size": global_batch_size,
        "total_steps": total_steps,
        "best_step": state.best_step if state.best_step is not None else state.global_step,
        "train": train,
    }
    if eval_metrics is not None:
        results["eval"] = eval_metrics
    if test_metrics is not None:
        results["test"] = test_metrics
    return results
