"""--time_budget planning: durations, the step count that fits, and the refusal that names the measured times."""

import math

import pytest

from peft_vision_lora.training.budget import (
    NOISE_RESERVE,
    OUTPUTS_RESERVE_S,
    BudgetError,
    BudgetPlan,
    parse_duration,
    plan_budget,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300", 300), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400), (" 2m 30s ", 150), (45, 45)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m5", "-3", "0", "5m3", "nan"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="--time_budget"):
        parse_duration(text)


def per_epoch(steps_per_epoch: int):
    return lambda total: (total - 1) // steps_per_epoch  # the evaluation at the end is part of final_s


def test_plan_fills_the_budget_and_no_more():
    kwargs = dict(elapsed_s=20.0, steps_done=3, step_s=2.0, eval_s=5.0, final_s=10.0)
    plan = plan_budget(300, evaluations_until=per_epoch(10), **kwargs)
    usable = 300 * (1 - NOISE_RESERVE) - OUTPUTS_RESERVE_S - 20 - 10

    def cost(n: int) -> float:
        return (n - 3) * 2.0 + per_epoch(10)(n) * 5.0

    assert cost(plan.total_steps) <= usable < cost(plan.total_steps + 1)
    assert plan.evaluations == per_epoch(10)(plan.total_steps)
    assert "steps of 2.00s" in plan.describe()
    assert BudgetPlan.from_dict(plan.to_dict()) == plan


def test_more_budget_never_fewer_steps():
    totals = [
        plan_budget(
            b, elapsed_s=5, steps_done=2, step_s=1.3, eval_s=4, final_s=6, evaluations_until=per_epoch(7)
        ).total_steps
        for b in range(40, 400, 7)
    ]
    assert totals == sorted(totals) and totals[-1] > totals[0]


def test_budget_too_small_names_the_step_time():
    with pytest.raises(BudgetError, match=r"one step takes 12\.50s") as info:
        plan_budget(30, elapsed_s=10, steps_done=0, step_s=12.5, eval_s=3, final_s=5, evaluations_until=lambda n: 0)
    needed = float(str(info.value).split("Give at least ")[1].rstrip("s."))
    assert math.isclose(needed, (10 + 5 + OUTPUTS_RESERVE_S + 12.5) / (1 - NOISE_RESERVE), abs_tol=1)


def test_steps_already_done_count_as_done():
    plan = plan_budget(100, elapsed_s=50, steps_done=40, step_s=1.0, eval_s=0, final_s=0, evaluations_until=lambda n: 0)
    assert plan.total_steps == 40 + math.floor(100 * (1 - NOISE_RESERVE) - OUTPUTS_RESERVE_S - 50)
