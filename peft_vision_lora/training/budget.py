"""``--time_budget``: fit a run's length, and its recipe, to a wall-clock budget measured on the run's own steps.

The run times its first optimizer steps and one evaluation batch, then :func:`plan_budget` picks the number of
steps so that everything left (the remaining steps, the evaluations they trigger, the final evaluation and the
outputs) ends inside the budget counted from the start of the process. The plan is stored in checkpoints, so a
resumed run keeps it rather than measuring again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh])")

# Writing the run folder (adapter, processor, card, metrics, plots) and the process exit, beyond the evaluations:
# a few seconds on CPU. Held back from every budget, with a share of the budget for the noise of a shared machine.
OUTPUTS_RESERVE_S = 8.0
NOISE_RESERVE = 0.03


class BudgetError(ValueError):
    """The time budget cannot hold what the run must do at least."""


def parse_duration(text: str | float) -> float:
    """Seconds in ``300``, ``300s``, ``5m``, ``1h30m`` or ``1.5h``."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        spec = str(text).strip().lower().replace(" ", "")
        try:
            seconds = float(spec)
        except ValueError:
            parts = _DURATION.findall(spec)
            if not parts or "".join(n + u for n, u in parts) != spec:
                raise ValueError(
                    f"--time_budget must be seconds or a duration such as 90s, 5m, 1h30m; got {text!r}."
                ) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"--time_budget must be positive, got {text!r}.")
    return seconds


@dataclass(frozen=True)
class BudgetPlan:
    """The run's length under a budget, and what it was derived from (all seconds are wall-clock)."""

    budget_s: float
    elapsed_s: float  # from process start to the moment of planning
    step_s: float  # one optimizer step, measured
    eval_s: float  # one evaluation of the watched split, estimated from a measured batch
    final_s: float  # the final evaluations (best weights, test) and the outputs
    total_steps: int
    evaluations: int  # evaluations during training that the plan paid for

    def describe(self) -> str:
        return (
            f"Time budget {self.budget_s:.0f}s: {self.total_steps} steps of {self.step_s:.2f}s, "
            f"{self.evaluations} evaluations of {self.eval_s:.1f}s, {self.final_s:.0f}s for the final evaluation and "
            f"outputs, {self.elapsed_s:.0f}s already spent"
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float | int]) -> BudgetPlan:
        return cls(**data)


def plan_budget(
    budget_s: float,
    *,
    elapsed_s: float,
    steps_done: int,
    step_s: float,
    eval_s: float,
    final_s: float,
    evaluations_until: Callable[[int], int],
    min_steps: int = 1,
) -> BudgetPlan:
    """The largest total step count whose remaining work ends inside ``budget_s``.

    ``evaluations_until(n)`` counts the evaluations a run of ``n`` steps makes before its end (the eval strategy's
    cadence); ``final_s`` is what comes after the last step whatever the length. Raises :class:`BudgetError`, naming
    the measured times, when not even ``min_steps`` fit.
    """
    usable = budget_s * (1 - NOISE_RESERVE) - OUTPUTS_RESERVE_S - elapsed_s - final_s

    def cost(total: int) -> float:
        return (total - steps_done) * step_s + evaluations_until(total) * eval_s

    # The cost grows with the step count: binary search for the last count that fits.
    low, high = steps_done, steps_done + max(1, math.floor(max(usable, 0) / step_s))
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= usable else (low, mid - 1)
    if low < max(min_steps, 1) or usable <= 0:
        raise BudgetError(
            f"--time_budget {budget_s:.0f}s cannot hold {max(min_steps, 1)} training step(s) and the final "
            f"evaluation: one step takes {step_s:.2f}s, one evaluation {eval_s:.1f}s, the final evaluation and "
            f"outputs {final_s + OUTPUTS_RESERVE_S:.0f}s, and {elapsed_s:.0f}s went to start-up. Give at least "
            f"{(elapsed_s + final_s + OUTPUTS_RESERVE_S + step_s * max(min_steps, 1)) / (1 - NOISE_RESERVE):.0f}s."
        )
    return BudgetPlan(budget_s, elapsed_s, step_s, eval_s, final_s, low, evaluations_until(low))
