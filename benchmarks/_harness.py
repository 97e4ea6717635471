"""Shared machinery of the benchmarks: one subprocess per measurement, A B A B order, medians, markdown tables.

A benchmark script is both the driver and the worker. The driver (no ``--child`` flag) builds the list of
configurations and calls :func:`alternate`, which runs the script again as ``script --child '<json config>'`` once per
configuration and repeat, cycling through the configurations (A B C A B C ...) so slow drifts of a shared machine
hit every configuration alike. The worker calls :func:`child_main`, measures, and prints one marked JSON line.

Each worker is its own process, so its peak resident memory (``ru_maxrss``) belongs to its configuration alone.
Workers call :func:`reset_peak_rss` once the model is loaded: the reported peak is then that of the measured work
(weights, gradients, optimizer state, activations), not the transient double copy some loaders make; the loading
peak is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_MARKER = "BENCHMARK_RESULT "
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_VIT = SHARED / "models" / "vit-small-patch14-dinov2-imgfocus"
FLOWERS12 = SHARED / "data" / "flowers12"


# ------------------------------------------------------------------------------------------------------------ worker


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> float:
    """Reset the peak-RSS high-water mark (Linux ``clear_refs``) and return the peak it had reached.

    Where the reset is not available the peak keeps counting from process start, which only overstates it.
    """
    before = peak_rss_mb()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return before


def tensor_peak_mb(fn: Callable[[], Any], resident: Iterable[Any]) -> float:
    """Peak MiB of live tensors while ``fn()`` runs: the CPU analogue of ``torch.cuda.max_memory_allocated``.

    ``resident`` are the tensors alive before the call (weights, buffers, optimizer state, inputs), counted once per
    storage; the profiler's allocator trace adds what ``fn`` allocates (activations, gradients, temporaries). Unlike
    peak RSS this does not depend on what the C allocator keeps mapped after a free, so it is the figure a device
    run would report.
    """
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    storages = {}
    for tensor in resident:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return (sum(storages.values()) + max(totals, default=0)) / 2**20


def child_main(work: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """Run ``work(config)`` if this process is a worker; return whether it was one.

    ``work`` returns its metrics; unless it measured ``peak_rss_mb`` itself, the peak RSS after it returns is added.
    """
    if "--child" not in sys.argv:
        return False
    config = json.loads(sys.argv[sys.argv.index("--child") + 1])
    import torch  # imported here so the driver process stays light

    torch.set_num_threads(config.get("threads", 2))
    result = work(config)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return True


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` for ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# ------------------------------------------------------------------------------------------------------------ driver


def make_random_vit(folder: Path, quick: bool) -> Path:
    """ViT-B/16 geometry (or, for --quick, the test suite's tiny ViT) with random weights, saved once so every worker
    loads it."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from peft_vision_lora.testing import make_tiny_vit

    if quick:  # in 16 px patches: the time-to-accuracy smoke run's two epochs learn its colours at that size
        return make_tiny_vit(folder, patch_size=16)
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig()).save_pretrained(folder)
    return folder


def run_child(script: Path, config: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter and return its metrics."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    # One BLAS/OpenMP pool per worker, sized like torch's, so workers do not oversubscribe the cores.
    env["OMP_NUM_THREADS"] = str(config.get("threads", 2))
    proc = subprocess.run(
        [sys.executable, str(script), "--child", json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"Benchmark worker {config.get('name')!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len(RESULT_MARKER) :])


def alternate(
    script: Path, configs: Sequence[dict[str, Any]], repeats: int, timeout: float = 900
) -> dict[str, list[dict[str, Any]]]:
    """Run every configuration ``repeats`` times, one subprocess each, in A B A B order; results by config name."""
    results: dict[str, list[dict[str, Any]]] = {config["name"]: [] for config in configs}
    for repeat in range(repeats):
        for config in configs:
            start = time.perf_counter()
            results[config["name"]].append(run_child(script, config, timeout))
            print(
                f"[{repeat + 1}/{repeats}] {config['name']}: {time.perf_counter() - start:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    return results


@dataclass(frozen=True)
class Stat:
    """Median of a measurement with its spread over all samples."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        values = list(values)
        return cls(statistics.median(values), min(values), max(values), len(values))

    def format(self, digits: int = 3) -> str:
        return f"{self.median:.{digits}f} ({self.min:.{digits}f}–{self.max:.{digits}f})"

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


def per_run_median(runs: Sequence[dict[str, Any]], key: str) -> Stat:
    """Median over runs of each run's median of ``key`` (a list), with min/max over every sample of every run."""
    medians = [statistics.median(run[key]) for run in runs]
    samples = [value for run in runs for value in run[key]]
    return Stat(statistics.median(medians), min(samples), max(samples), len(samples))


def scalar_stat(runs: Sequence[dict[str, Any]], key: str) -> Stat:
    return Stat.of(run[key] for run in runs)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features that decide bf16 speed: AVX-512 BF16 and AMX (tiles, bf16) where present, else AVX2."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})


def machine_info(threads: int) -> dict[str, Any]:
    """The machine and library versions a measurement was taken on."""
    import peft
    import torch
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "threads_per_worker": threads,
        "cpu_flags": cpu_flags(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        # glibc malloc tunables change peak RSS (not tensor memory): record them with the figures.
        "allocator_env": {key: value for key, value in os.environ.items() if key.startswith("MALLOC_")},
    }


def format_machine(info: dict[str, Any]) -> str:
    return (
        f"Machine: {info['cpu']} ({' '.join(info.get('cpu_flags', []))}), {info['cores']} cores "
        f"({info['threads_per_worker']} torch threads per worker); "
        f"Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}; "
        f"{info['date']}." + (f" Allocator: {info['allocator_env']}." if info.get("allocator_env") else "")
    )


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(median: float, best: float, limit: float, *, percent: bool = False) -> str:
    """A ratio against its target, as the median and as the best (min over samples) figure.

    On a machine shared with other jobs the median carries their load; the best-of figure (what ``timeit``
    recommends) is the closer estimate of the cost itself. Both are stated.
    """
    show = (lambda x: f"{x:+.1%}") if percent else (lambda x: f"{x:.2f}x")
    met = lambda x: "met" if x <= limit else "NOT met"  # noqa: E731
    return f"median {show(median)} ({met(median)}), best {show(best)} ({met(best)}); target <= {show(limit)}"


def common_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny random model, one repeat: a smoke run of seconds")
    parser.add_argument("--repeats", type=int, default=None, help="subprocesses per configuration (A B A B order)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each worker")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
