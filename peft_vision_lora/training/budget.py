"""``--time_budget``: fit a run's length to a wall-clock budget measured on the run's own steps.

The run times an evaluation batch before it trains and its optimizer steps 2 and 3 (the first one warms up), then
:func:`plan_budget` picks the number of steps so that everything left (the remaining steps, the evaluations they
trigger, the final evaluation and the outputs) ends inside the budget counted from the start of the process. The
learning-rate schedule is rebuilt for that length. Each tenth of the budget the run times its recent steps and plans
again (a shared machine's speed drifts), until four fifths of the budget are spent. Unless ``--eval_strategy`` was
given, evaluations during training are spaced so that they cost about a tenth of the training time (every epoch when
an epoch costs ten evaluations or more, every few epochs otherwise): a budget pays for steps first. The plan is stored
in checkpoints, so a resumed run keeps it rather than measuring again.

The recipe changes with the budget in one explicit, printed way: token dropout halves a step's cost but caps what
many epochs learn, so when the first plan fits at least ``EVERY_TOKEN_EPOCHS`` epochs of token-dropped steps, the run
trains on every token from then on and plans again on the dearer steps (about half as many). Chosen on validation
carved from train (benchmarks/RESULTS.md): at the compute of 8 epochs of token keep 0.5, every token for half the steps
was ahead on cifar10-1k (3 seeds of 3) and level on fashion-mnist-1k; at 10-11 epochs ahead on both. The threshold sits
a little below 8 because a first plan's epoch count moves by about 5% with a shared machine's speed. Below it, more
time is more steps of the same recipe, so the switch does not make more time give a worse model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn
from torch.utils.data import DataLoader

from ..evaluation.metrics import model_inputs
from .arguments import DataArguments, TrainingArguments, parse_duration
from .clock import PhaseClock
from .model import merged_adapters
from .optim import StepPlan
from .parts import LoopPart
from .token_dropout import TokenDropoutPart
from .validation import EvalCadence

# Writing the run folder (adapter, processor, card, metrics, plots) and the process exit, beyond the evaluations:
# a few seconds on CPU. Held back from every budget, with a share of the budget for the noise of a shared machine.
OUTPUTS_RESERVE_S = 3.0
NOISE_RESERVE = 0.03
# An evaluation costs its forward passes plus a fixed part (loader start, metrics): about 20 ms on a tiny model.
EVAL_OVERHEAD_S = 0.05
# Evaluations during a budgeted run take at most about this share of its training time (measured: on cifar10-1k at
# 112 px, evaluating the validation carve every epoch took 17-19% of a 226 s budget; see benchmarks/RESULTS.md).
EVAL_SHARE = 0.1


TIMED_STEPS = 2  # steps timed after the first one (which warms up) before the length is planned
# A shared machine's speed drifts: a fresh run measures its recent steps again and re-plans each tenth of the budget,
# until four fifths of it are spent. A resumed run keeps its checkpoint's plan (its schedule is the one saved).
REPLAN_EVERY, LAST_PLAN, RECENT_STEPS = 0.1, 0.8, 5
# A budget that fits this many epochs of token-dropped steps trains on every token instead (see the module docstring).
EVERY_TOKEN_EPOCHS = 7.5


class BudgetError(ValueError):
    """The time budget cannot hold what the run must do at least."""


@dataclass(frozen=True)
class BudgetPlan:
    """The run's length under a budget, and what it was derived from (all seconds are wall-clock)."""

    budget_s: float
    elapsed_s: float  # from process start to the moment of planning
    steps_done: int  # optimizer steps done at that moment
    step_s: float  # one optimizer step, measured
    eval_s: float  # one evaluation of the watched split, estimated from a measured batch
    final_s: float  # the final evaluations (best weights, test) and the outputs
    total_steps: int
    evaluations: int  # evaluations during training that the plan paid for
    eval_every_epochs: int = 1  # under the epoch strategy: the spacing of those evaluations
    every_token: bool = False  # token dropout turned off: the budget fits EVERY_TOKEN_EPOCHS epochs of dropped steps

    def describe(self) -> str:
        every = f" (every {self.eval_every_epochs} epochs)" if self.eval_every_epochs > 1 else ""
        tokens = ", on every token" if self.every_token else ""
        return (
            f"Time budget {self.budget_s:.0f}s: {self.total_steps} steps of {self.step_s:.2f}s{tokens}, "
            f"{self.evaluations} evaluations of {self.eval_s:.1f}s{every}, {self.final_s:.0f}s for the final "
            f"evaluation and outputs, {self.elapsed_s:.0f}s spent on the first {self.steps_done}"
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
    cadence: EvalCadence,
    min_steps: int = 1,
) -> BudgetPlan:
    """The largest total step count whose remaining work ends inside ``budget_s``.

    ``cadence`` counts the evaluations a run of a given length makes before its end; ``final_s`` is what comes after
    the last step whatever the length. Raises :class:`BudgetError`, naming
    the measured times, when not even ``min_steps`` fit.
    """
    keep = 1 - NOISE_RESERVE
    usable = budget_s * keep - OUTPUTS_RESERVE_S - elapsed_s - final_s

    def cost(total: int) -> float:
        return (total - steps_done) * step_s + (cadence.count(total) - cadence.count(steps_done)) * eval_s

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
            f"{math.ceil((elapsed_s + final_s + OUTPUTS_RESERVE_S + step_s * max(min_steps, 1)) / keep)}s."
        )
    return BudgetPlan(
        budget_s, elapsed_s, steps_done, step_s, eval_s, final_s, low, cadence.count(low), cadence.every_epochs
    )


def eval_spacing(eval_s: float, epoch_s: float) -> int:
    """Epochs between evaluations so that they cost at most about ``EVAL_SHARE`` of the training time."""
    return max(1, math.ceil(eval_s / (EVAL_SHARE * epoch_s))) if epoch_s > 0 else 1


class TimeBudget(LoopPart):
    """Measures the run's own costs, then gives it the length that ends inside the budget (``replan(plan)``).

    ``saved``: the plan of the checkpoint a resumed run continues from (nothing is measured again). ``cadence``: when
    the watched split is evaluated; ``space_evaluations``: the plan may space epoch evaluations (the strategy was not
    asked for); ``token_dropout``: the run's token dropout, which a budget of many epochs turns off.
    """

    name = "time_budget"

    def __init__(
        self,
        budget_s: float,
        *,
        saved: BudgetPlan | None,
        clock: PhaseClock,
        accelerator: Accelerator,
        step_model: nn.Module,
        loaders: dict[str, DataLoader],
        eval_split: str | None,
        cadence: EvalCadence,
        space_evaluations: bool,
        replan: Callable[[BudgetPlan], None],
        token_dropout: TokenDropoutPart | None = None,
    ) -> None:
        self.budget_s, self.saved, self.clock, self.accelerator = budget_s, saved, clock, accelerator
        self.token_dropout = token_dropout if token_dropout and token_dropout.drops_tokens() else None
        self.step_model, self.loaders, self.eval_split = step_model, loaders, eval_split
        self.cadence, self.space_evaluations, self.replan = cadence, space_evaluations, replan
        self.batch_s = 0.0
        # (step, time, evaluation seconds) where the timing of all steps and of the recent ones started
        self.since_start: tuple[int, float, float] | None = None
        self.recent: tuple[int, float, float] = (0, 0.0, 0.0)
        self.plan: BudgetPlan | None = None
        self.settled = False  # a plan was made on steps of the recipe the run goes on with
        self.done = self.planned

    @property
    def planned(self) -> bool:
        """The length was planned already (a resumed run): nothing is measured again."""
        return self.saved is not None

    def recipe(self) -> str:
        planned = "" if self.planned else f" (length set after {TIMED_STEPS + 1} steps, checked as it runs)"
        tokens = f"; every token if {EVERY_TOKEN_EPOCHS}+ epochs fit" if self.token_dropout and not self.planned else ""
        return f"--time_budget {self.budget_s:.0f}s{planned}{tokens}"

    def begin(self, resumed: bool) -> None:
        if self.saved is not None and self.saved.every_token and self.token_dropout:
            self.token_dropout.keep_every_token()  # as the run did when it was checkpointed
        if not self.planned:
            self.batch_s = self._eval_batch_seconds()

    @torch.no_grad()
    def _eval_batch_seconds(self) -> float:
        """Seconds of one evaluation batch (the second one: the first warms up), 0 without evaluation data."""
        loader = next(iter(self.loaders.values()), None)
        if loader is None:
            return 0.0
        self.step_model.eval()
        seconds, batches = [], iter(loader)
        with merged_adapters(self.step_model):  # as evaluations run
            for batch in (next(batches, None), next(batches, None)):
                if batch is None:
                    break
                started = time.perf_counter()
                self.step_model(**model_inputs(batch))
                seconds.append(time.perf_counter() - started)
        self.step_model.train()
        return seconds[-1] if seconds else 0.0

    def after_step(self, step: int) -> None:
        if self.done:
            return
        now, eval_s = time.perf_counter(), self.clock.total("eval")
        if not self.since_start:  # the first step warms up: time the next ones
            self.since_start = self.recent = (step, now, eval_s)
            return
        first, started, _ = self.recent
        if step - first < TIMED_STEPS or (self.settled and now - started < REPLAN_EVERY * self.budget_s):
            return
        # Seconds per step, evaluations left out (the plan counts them apart): over the whole run so far, or over
        # the recent steps when the machine got slower (a few recent steps alone are too noisy to speed up on).
        rates = [
            (now - start - (eval_s - evals)) / (step - begin)
            for begin, start, evals in (self.since_start, self.recent)
            if step - begin >= (TIMED_STEPS if begin == self.since_start[0] else RECENT_STEPS)
        ]
        first_plan = self.plan is None
        self.plan = self._plan(max(rates), step)
        self.replan(self.plan)
        if first_plan and self.plan.every_token:  # the steps timed dropped tokens: time the dearer ones, plan again
            self.token_dropout.keep_every_token()
            self.since_start = None
            return
        self.settled = True
        # The last plan is made with a fifth of the budget left, so that what follows it runs as planned.
        self.done = self.plan.total_steps <= step or self.clock.elapsed() > LAST_PLAN * self.budget_s
        self.recent = (step, time.perf_counter(), self.clock.total("eval"))

    def _plan(self, step_s: float, steps_done: int) -> BudgetPlan:
        """The plan, made by the main process and sent to all, so that every process trains the same steps."""
        plan: list[BudgetPlan | BudgetError | None] = [None]
        if self.accelerator.is_main_process:
            cost = {split: EVAL_OVERHEAD_S + self.batch_s * len(loader) for split, loader in self.loaders.items()}
            eval_s = cost[self.eval_split] if self.eval_split else 0.0
            # The last evaluation of the eval split, a second one of the best weights (validation), and the test.
            final_s = sum(cost.values()) + (eval_s if self.eval_split == "validation" else 0.0)
            cadence = self.cadence
            if self.space_evaluations and cadence.strategy == "epoch":
                cadence = replace(cadence, every_epochs=eval_spacing(eval_s, step_s * cadence.steps_per_epoch))
            try:
                plan[0] = plan_budget(
                    self.budget_s,
                    elapsed_s=self.clock.elapsed(),
                    steps_done=steps_done,
                    step_s=step_s,
                    eval_s=eval_s,
                    final_s=final_s,
                    cadence=cadence,
                )
            except BudgetError as error:  # refused at the first plan; later, the run is out of time: it ends now
                ended = BudgetPlan(
                    self.budget_s, self.clock.elapsed(), steps_done, step_s, eval_s, final_s, steps_done, 0,
                    cadence.every_epochs,
                )  # fmt: skip
                plan[0] = error if self.plan is None else ended
            if isinstance(plan[0], BudgetPlan):
                plan[0] = replace(plan[0], every_token=self._every_token(plan[0]))
        broadcast_object_list(plan)
        if isinstance(plan[0], BudgetError):
            raise plan[0]
        self.accelerator.print(plan[0].describe())
        return plan[0]

    def _every_token(self, plan: BudgetPlan) -> bool:
        """Decided once, at the first plan: whether the budget fits ``EVERY_TOKEN_EPOCHS`` epochs of dropped steps."""
        if self.plan is not None:
            return self.plan.every_token
        epochs = plan.total_steps / self.cadence.steps_per_epoch
        return self.token_dropout is not None and epochs >= EVERY_TOKEN_EPOCHS


def budget_plan(plan: StepPlan, time_budget: str | None, saved: dict[str, float | int] | None) -> StepPlan:
    """Under ``--time_budget``: a resumed run's length as its checkpoint planned it (``saved``: the checkpoint's
    plan), else a provisional length (the epochs asked for, at least the steps that are timed) until the run has
    measured itself."""
    if time_budget is None:
        return plan
    if saved:
        return plan.with_total(saved["total_steps"], "budget")
    return plan.with_total(max(plan.total_steps, TIMED_STEPS + 1), "budget-provisional")


def budget_parts(
    args: TrainingArguments,
    data_args: DataArguments,
    *,
    plan: StepPlan,
    saved: dict[str, float | int] | None,
    parts: list[LoopPart],
    **part: object,
) -> list[LoopPart]:
    """``[TimeBudget(...)]`` under ``--time_budget`` (``saved``: a resumed run's plan; ``parts``: the run's other
    parts, of which the budget may turn token dropout off; ``part``: its other arguments), else nothing."""
    if args.time_budget is None:
        return []
    if data_args.resolution_schedule:
        raise ValueError("--resolution_schedule stages a run of known length: it cannot be used with --time_budget.")
    token_dropout = next((p for p in parts if isinstance(p, TokenDropoutPart)), None)
    return [
        TimeBudget(
            parse_duration(args.time_budget),
            saved=BudgetPlan.from_dict(saved) if saved and plan.reason == "budget" else None,
            space_evaluations=args.eval_strategy is None,
            token_dropout=token_dropout,
            **part,
        )
    ]
