"""``--time_budget``: fit a run's length to a wall-clock budget measured on the run's own steps.

The run times an evaluation batch before it trains and its optimizer steps 2 and 3 (the first one warms up), then
:func:`plan_budget` picks the number of steps so that everything left (the remaining steps, the evaluations they
trigger, the final evaluation and the outputs) ends inside the budget counted from the start of the process. The
learning-rate schedule is rebuilt for that length. Each tenth of the budget the run times its recent steps and plans
again (a shared machine's speed drifts), until four fifths of the budget are spent. Unless ``--eval_strategy`` was
given, evaluations during training are spaced so that they cost about a tenth of the training time (every epoch when
an epoch costs ten evaluations or more, every few epochs otherwise): a budget pays for steps first. The plan is stored
in checkpoints, so a resumed run keeps it rather than measuring again.

The recipe changes with the budget in one explicit, printed way, decided once before the first step: token dropout
halves a step's cost and LP-FT gives the head a start, but both cap what many epochs learn. So when the budget fits at
least ``EVERY_TOKEN_EPOCHS`` epochs of the default recipe (token-dropped steps, timed on a forward and backward of
random images, after the LP-FT pass, estimated from the timed evaluation batch), the run trains on every token from a
random head instead, for about half as many steps. Chosen on validation carved from train (benchmarks/RESULTS.md): at
the compute of 8 epochs of token keep 0.5, every token for half the steps was ahead on cifar10-1k (3 seeds of 3) and
level on fashion-mnist-1k, and at that length a random head was ahead of the LP-FT one on cifar10-1k (73.0 against
70.5, 3 seeds) and level on fashion-mnist-1k. The threshold sits a little below 8 because the estimate moves by about
5% with a shared machine's speed. Below it, more time is more steps of the same recipe, so the switch does not make
more time give a worse model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn
from torch.utils.data import DataLoader

from ..evaluation.metrics import model_inputs
from .arguments import DataArguments, TrainingArguments, parse_duration
from .clock import PhaseClock
from .head_init import LinearProbeHead
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
# A budget that fits this many epochs of the default recipe trains on every token from a random head (module docstring).
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
    every_token: bool = False  # every token from a random head: the budget fit EVERY_TOKEN_EPOCHS epochs of the default
    dropped_epochs: float = 0.0  # epochs of the default recipe the budget was estimated to fit (0: no choice to make)

    def describe(self) -> str:
        every = f" (every {self.eval_every_epochs} epochs)" if self.eval_every_epochs > 1 else ""
        tokens = ", on every token from a random head" if self.every_token else ""
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
    asked for); ``token_dropout`` and ``linear_probe``: the run's token dropout and LP-FT, which a budget of many
    epochs turns off; ``batch_size``, ``accumulation``, ``eval_batch_size``, ``image_size``: what a step and an
    evaluation batch hold, for the estimate that chooses the recipe.
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
        image_size: int,
        batch_size: int,
        accumulation: int = 1,
        eval_batch_size: int = 1,
        token_dropout: TokenDropoutPart | None = None,
        linear_probe: LinearProbeHead | None = None,
    ) -> None:
        self.budget_s, self.saved, self.clock, self.accelerator = budget_s, saved, clock, accelerator
        self.token_dropout = token_dropout if token_dropout and token_dropout.drops_tokens() else None
        self.linear_probe, self.image_size, self.batch_size = linear_probe, image_size, batch_size
        self.accumulation, self.eval_batch_size = accumulation, eval_batch_size
        self.step_model, self.loaders, self.eval_split = step_model, loaders, eval_split
        self.cadence, self.space_evaluations, self.replan = cadence, space_evaluations, replan
        self.batch_s = 0.0
        self.every_token, self.dropped_epochs = False, 0.0
        # (step, time, evaluation seconds) where the timing of all steps and of the recent ones started
        self.since_start: tuple[int, float, float] | None = None
        self.recent: tuple[int, float, float] = (0, 0.0, 0.0)
        self.plan: BudgetPlan | None = None
        self.done = self.planned

    @property
    def planned(self) -> bool:
        """The length was planned already (a resumed run): nothing is measured again."""
        return self.saved is not None

    def recipe(self) -> str:
        planned = "" if self.planned else f" (length set after {TIMED_STEPS + 1} steps, checked as it runs)"
        tokens = ""
        if self.token_dropout and not self.planned:
            tokens = f"; every token from a random head if {EVERY_TOKEN_EPOCHS}+ epochs fit"
        return f"--time_budget {self.budget_s:.0f}s{planned}{tokens}"

    def begin(self, resumed: bool) -> None:
        if self.saved is not None:
            if self.saved.every_token and self.token_dropout:
                self.token_dropout.keep_every_token()  # as the run did when it was checkpointed
            return
        self.batch_s = self._eval_batch_seconds()
        if self.token_dropout:
            self._choose_recipe()

    def _choose_recipe(self) -> None:
        """Before the first step (and the LP-FT pass): every token from a random head when the budget fits
        ``EVERY_TOKEN_EPOCHS`` epochs of the default recipe."""
        step_s = self._step_seconds()
        estimate: list[float] = [0.0, step_s]
        if self.accelerator.is_main_process:
            probe_s = 0.0
            if self.linear_probe is not None:  # the pass the default recipe would make: one evaluation of train
                probe_s = self._pass_seconds(math.ceil(self.linear_probe.images() / self.eval_batch_size))
            try:
                plan = self._plan_here(step_s, 0, self.clock.elapsed() + probe_s)
                estimate[0] = plan.total_steps / self.cadence.steps_per_epoch
            except BudgetError:
                pass  # the first plan, on timed steps, refuses the budget with the measured times
        broadcast_object_list(estimate)
        self.dropped_epochs, step_s = estimate
        self.every_token = self.dropped_epochs >= EVERY_TOKEN_EPOCHS
        if self.every_token:
            self.token_dropout.keep_every_token()
            if self.linear_probe is not None:
                self.linear_probe.skip()
        self.accelerator.print(
            f"Time budget {self.budget_s:.0f}s fits about {self.dropped_epochs:.1f} epochs of token-dropped steps of "
            f"{step_s:.2f}s: "
            + ("every token from a random head" if self.every_token else f"fewer than {EVERY_TOKEN_EPOCHS}, kept")
        )

    def _step_seconds(self) -> float:
        """One optimizer step's forward and backward on random images, timed on the second of two (the first warms
        up). The gradients are dropped and no random state is drawn, so the run trains as it would have."""
        model, device = self.step_model, self.accelerator.device
        rows, size = self.batch_size, self.image_size
        pixels = torch.randn(rows, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        labels = torch.zeros(rows, dtype=torch.long, device=device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        seconds = []
        model.train()
        # No gradient is averaged between processes (they are dropped), and the RNG states are restored after.
        rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        with rng, self.accelerator.no_sync(model):
            for _ in range(2):
                self.token_dropout.before_forward({"labels": labels}, 0)
                started = time.perf_counter()
                F.cross_entropy(model(pixel_values=pixels).logits.float(), labels).backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds.append(time.perf_counter() - started)
                for param in trainable:
                    param.grad = None
        return seconds[-1] * self.accumulation

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
        if step - first < TIMED_STEPS or (self.plan and now - started < REPLAN_EVERY * self.budget_s):
            return
        # Seconds per step, evaluations left out (the plan counts them apart): over the whole run so far, or over
        # the recent steps when the machine got slower (a few recent steps alone are too noisy to speed up on).
        rates = [
            (now - start - (eval_s - evals)) / (step - begin)
            for begin, start, evals in (self.since_start, self.recent)
            if step - begin >= (TIMED_STEPS if begin == self.since_start[0] else RECENT_STEPS)
        ]
        self.plan = self._plan(max(rates), step)
        self.replan(self.plan)
        # The last plan is made with a fifth of the budget left, so that what follows it runs as planned.
        self.done = self.plan.total_steps <= step or self.clock.elapsed() > LAST_PLAN * self.budget_s
        self.recent = (step, time.perf_counter(), self.clock.total("eval"))

    def _pass_seconds(self, batches: int) -> float:
        """An inference pass over ``batches`` evaluation batches: an evaluation, or the LP-FT feature pass."""
        return EVAL_OVERHEAD_S + self.batch_s * batches

    def _plan_here(self, step_s: float, steps_done: int, elapsed_s: float) -> BudgetPlan:
        """The plan for a step of ``step_s`` seconds, ``elapsed_s`` into the run (this process's measurements)."""
        cost = {split: self._pass_seconds(len(loader)) for split, loader in self.loaders.items()}
        eval_s = cost[self.eval_split] if self.eval_split else 0.0
        # The last evaluation of the eval split, a second one of the best weights (validation), and the test.
        final_s = sum(cost.values()) + (eval_s if self.eval_split == "validation" else 0.0)
        cadence = self.cadence
        if self.space_evaluations and cadence.strategy == "epoch":
            cadence = replace(cadence, every_epochs=eval_spacing(eval_s, step_s * cadence.steps_per_epoch))
        try:
            plan = plan_budget(
                self.budget_s, elapsed_s=elapsed_s, steps_done=steps_done, step_s=step_s, eval_s=eval_s,
                final_s=final_s, cadence=cadence,
            )  # fmt: skip
        except BudgetError:
            if self.plan is None:
                raise  # refused at the first plan; later, the run is out of time: it ends now
            plan = BudgetPlan(
                self.budget_s, elapsed_s, steps_done, step_s, eval_s, final_s, steps_done, 0, cadence.every_epochs
            )
        return replace(plan, every_token=self.every_token, dropped_epochs=self.dropped_epochs)

    def _plan(self, step_s: float, steps_done: int) -> BudgetPlan:
        """The plan, made by the main process and sent to all, so that every process trains the same steps."""
        plan: list[BudgetPlan | BudgetError | None] = [None]
        if self.accelerator.is_main_process:
            try:
                plan[0] = self._plan_here(step_s, steps_done, self.clock.elapsed())
            except BudgetError as error:
                plan[0] = error
        broadcast_object_list(plan)
        if isinstance(plan[0], BudgetError):
            raise plan[0]
        self.accelerator.print(plan[0].describe())
        return plan[0]


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
    parts, of which the budget may turn token dropout and LP-FT off; ``part``: its other arguments), else nothing."""
    if args.time_budget is None:
        return []
    if data_args.resolution_schedule:
        raise ValueError("--resolution_schedule stages a run of known length: it cannot be used with --time_budget.")
    return [
        TimeBudget(
            parse_duration(args.time_budget),
            saved=BudgetPlan.from_dict(saved) if saved and plan.reason == "budget" else None,
            space_evaluations=args.eval_strategy is None,
            batch_size=args.per_device_train_batch_size,
            accumulation=args.gradient_accumulation_steps,
            eval_batch_size=args.per_device_eval_batch_size,
            token_dropout=next((p for p in parts if isinstance(p, TokenDropoutPart)), None),
            linear_probe=next((p for p in parts if isinstance(p, LinearProbeHead)), None),
            **part,
        )
    ]
