"""Where a run's wall time goes: phases (start-up, feature cache, linear probe, training, evaluation, outputs) that
add up to the whole run, because exactly one phase is running at any moment."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path


def process_start_time() -> float | None:
    """When this process started (``time.time()`` scale), where Linux tells it; None elsewhere."""
    try:
        # Field 22 of /proc/self/stat (after the command name, which may hold spaces) is the start in clock ticks
        # since boot; /proc/stat's btime is the boot time.
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line[:5] == "btime")
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


PHASE_ORDER = ("startup", "feature_cache", "linear_probe", "train", "eval", "outputs")


class PhaseClock:
    """Seconds per phase since ``origin`` (a ``time.time()``, e.g. :func:`process_start_time`; default: now).

    Time before the first :meth:`phase` is ``startup``; a phase entered inside another pauses the outer one.
    """

    def __init__(self, origin: float | None = None) -> None:
        now = time.perf_counter()
        self.start = now - max(0.0, time.time() - origin) if origin is not None else now
        self.current, self.since = "startup", self.start
        self.seconds: dict[str, float] = {}
        self.last: dict[str, float] = {}  # the latest span of each phase
        self.tally: dict[str, float] = {"data_wait": 0.0}  # seconds inside a phase worth reporting apart

    def _switch(self, name: str) -> str:
        now = time.perf_counter()
        self.seconds[self.current] = self.seconds.get(self.current, 0.0) + now - self.since
        previous, self.current, self.since = self.current, name, now
        return previous

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        previous = self._switch(name)
        try:
            yield
        finally:
            self._switch(previous)
            self.last[name] = time.perf_counter() - started

    def elapsed(self) -> float:
        """Seconds since the origin: the whole run so far."""
        return time.perf_counter() - self.start

    def total(self, name: str) -> float:
        """Seconds spent in phase ``name`` so far, the running span included."""
        running = time.perf_counter() - self.since if self.current == name else 0.0
        return self.seconds.get(name, 0.0) + running

    def summary(self) -> dict[str, float]:
        """``{"<phase>_s": seconds, ..., "total_s": seconds}`` in the order a run goes through them; the phases add
        up to the total."""
        self._switch(self.current)
        order = sorted(
            self.seconds, key=lambda name: PHASE_ORDER.index(name) if name in PHASE_ORDER else len(PHASE_ORDER)
        )
        total = {"total_s": round(time.perf_counter() - self.start, 3)}
        return {f"{name}_s": round(self.seconds[name], 3) for name in order} | total
