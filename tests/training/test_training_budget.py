"""--time_budget planning: durations, the step count that fits, and the refusal that names the measured times."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
from helpers.training import FREEZE_DRIVER, adapter_difference

from peft_vision_lora.training.budget import (
    NOISE_RESERVE,
    OUTPUTS_RESERVE_S,
    BudgetError,
    BudgetPlan,
    eval_spacing,
    parse_duration,
    plan_budget,
)
from peft_vision_lora.training.checkpointing import TrainerState, list_checkpoints
from peft_vision_lora.training.validation import EvalCadence


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


EVERY_10, EVERY_7, NEVER = EvalCadence("epoch", 10), EvalCadence("epoch", 7), EvalCadence("no", 1)


def test_plan_fills_the_budget_and_no_more():
    kwargs = dict(elapsed_s=20.0, steps_done=3, step_s=2.0, eval_s=5.0, final_s=10.0)
    plan = plan_budget(300, cadence=EVERY_10, **kwargs)
    usable = 300 * (1 - NOISE_RESERVE) - OUTPUTS_RESERVE_S - 20 - 10

    def cost(n: int) -> float:
        return (n - 3) * 2.0 + per_epoch(10)(n) * 5.0

    assert cost(plan.total_steps) <= usable < cost(plan.total_steps + 1)
    assert plan.evaluations == per_epoch(10)(plan.total_steps)
    assert "steps of 2.00s" in plan.describe()
    assert BudgetPlan.from_dict(plan.to_dict()) == plan


def test_more_budget_never_fewer_steps():
    totals = [
        plan_budget(b, elapsed_s=5, steps_done=2, step_s=1.3, eval_s=4, final_s=6, cadence=EVERY_7).total_steps
        for b in range(40, 400, 7)
    ]
    assert totals == sorted(totals) and totals[-1] > totals[0]


def test_budget_too_small_names_the_step_time():
    with pytest.raises(BudgetError, match=r"one step takes 12\.50s") as info:
        plan_budget(30, elapsed_s=10, steps_done=0, step_s=12.5, eval_s=3, final_s=5, cadence=NEVER)
    needed = float(str(info.value).split("Give at least ")[1].rstrip("s."))
    assert math.isclose(needed, (10 + 5 + OUTPUTS_RESERVE_S + 12.5) / (1 - NOISE_RESERVE), abs_tol=1)


def test_steps_already_done_count_as_done():
    plan = plan_budget(100, elapsed_s=50, steps_done=40, step_s=1.0, eval_s=0, final_s=0, cadence=NEVER)
    assert plan.total_steps == 40 + math.floor(100 * (1 - NOISE_RESERVE) - OUTPUTS_RESERVE_S - 50)


@pytest.mark.parametrize(
    ("eval_s", "epoch_s", "every"),
    [(1.0, 100.0, 1), (10.0, 100.0, 1), (10.1, 100.0, 2), (25.0, 100.0, 3), (60.0, 20.0, 30), (5.0, 0.0, 1)],
)
def test_eval_spacing_keeps_evaluations_to_a_tenth_of_training(eval_s, epoch_s, every):
    assert eval_spacing(eval_s, epoch_s) == every
    if epoch_s:  # the fewest epochs between evaluations that keeps them within the share
        assert eval_s <= 0.1 * epoch_s * every + 1e-9 and (every == 1 or eval_s > 0.1 * epoch_s * (every - 1))


def test_eval_cadence_counts_what_it_calls_due():
    for cadence in (
        EvalCadence("epoch", 6),
        EvalCadence("epoch", 6, every_epochs=3),
        EvalCadence("steps", 6, eval_steps=4),
        EvalCadence("steps", 6, eval_steps=0.25),
        EvalCadence("no", 6),
    ):
        total = 40
        due = [s for s in range(1, total) if cadence.due(s, total, epoch_done=s % 6 == 0, epochs_done=s // 6)]
        assert len(due) == cadence.count(total), cadence
    assert [s for s in range(1, 40) if EvalCadence("epoch", 6, every_epochs=3).due(
        s, 40, epoch_done=s % 6 == 0, epochs_done=s // 6)] == [18, 36]  # fmt: skip


# ------------------------------------------------------------------------------------------------ in the loop


def budget_run(model, data, out, *flags):
    from peft_vision_lora.training import parse_args, train

    base = ["--model", str(model), "--dataset", str(data), "--output_dir", str(out), "--disable_tqdm"]
    return train(*parse_args([*base, "--per_device_train_batch_size", "4", *flags]))


def test_time_budget_sets_the_length_and_ends_inside_it(tiny_vit, tiny_data, tmp_path, capsys):
    budget = 12
    metrics = budget_run(tiny_vit, tiny_data, tmp_path / "out", "--time_budget", str(budget), "--logging_steps", "1")
    plan = metrics["time_budget"]
    assert plan["budget_s"] == budget and plan["step_s"] > 0 and plan["eval_s"] > 0  # validation evaluated per epoch
    assert metrics["total_steps"] == plan["total_steps"] > 3  # more than the steps that were timed
    # The plan fills the budget with what it measured (the planning rule), and the run ends near it: the machine is
    # shared, so the wall time gets a wide margin; a plan off by the step time's order of magnitude would not pass.
    planned = plan["elapsed_s"] + plan["final_s"] + (plan["total_steps"] - plan["steps_done"]) * plan["step_s"]
    assert planned <= budget or plan["total_steps"] == plan["steps_done"]  # or, late, it ran out of time: ended
    assert metrics["phases"]["total_s"] <= budget * 2
    printed = capsys.readouterr().out
    assert "until --time_budget has timed the run" in printed
    assert f"Time budget {budget}s: {plan['total_steps']} steps" in printed
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert max(e["step"] for e in log) == plan["total_steps"]
    # The schedule was rebuilt for the planned length: warmup, then a cosine decay ending near zero.
    lrs = [e["learning_rate"] for e in log if "learning_rate" in e]
    assert lrs[-1] < 0.05 * max(lrs)


def test_time_budget_spaces_epoch_evaluations_as_planned(tiny_vit, tiny_data, tmp_path, monkeypatch, capsys):
    # On the tiny model an evaluation is cheap next to an epoch: make the spacing rule ask for every second epoch.
    monkeypatch.setattr("peft_vision_lora.training.budget.eval_spacing", lambda eval_s, epoch_s: 2)
    metrics = budget_run(tiny_vit, tiny_data, tmp_path / "out", "--time_budget", "12")
    plan, steps_per_epoch = metrics["time_budget"], 6  # 24 training images, batch 4
    assert plan["eval_every_epochs"] == 2 and "(every 2 epochs)" in capsys.readouterr().out
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    evaluated = [e["step"] for e in log if "eval_top1_accuracy" in e]
    during = [s for s in evaluated if s < plan["total_steps"]]
    assert all(s % (2 * steps_per_epoch) == 0 for s in during) and len(during) == plan["evaluations"]
    assert evaluated[-1] == plan["total_steps"]  # and once at the end


def token_keeps(monkeypatch) -> list[float]:
    """The keep fraction of every training forward's token dropout, in order."""
    from peft_vision_lora.token_dropout import TokenDropout

    keeps, hook = [], TokenDropout._hook

    def recording(self, module, args, output):
        if module.training:
            keeps.append(self.keep)
        return hook(self, module, args, output)

    monkeypatch.setattr(TokenDropout, "_hook", recording)
    return keeps


@pytest.mark.parametrize(
    ("threshold", "switches"), [(7.5, True), (10**9, False)], ids=["many-epochs-fit", "few-epochs-fit"]
)
def test_a_budget_of_many_epochs_trains_on_every_token_from_a_random_head(
    tiny_vit, tiny_data, tmp_path, monkeypatch, capsys, threshold, switches
):
    """The one budget-dependent rule: when the budget fits EVERY_TOKEN_EPOCHS epochs of the default recipe (token
    dropout, LP-FT head), decided before the first step, the run trains on every token from a random head; with fewer
    epochs it keeps both. The timed forward and backward that decides moves no weight."""
    from peft_vision_lora.training import head_init

    monkeypatch.setattr("peft_vision_lora.training.budget.EVERY_TOKEN_EPOCHS", threshold)
    keeps = token_keeps(monkeypatch)
    probes = []
    fit = head_init.fit_linear_head
    monkeypatch.setattr(head_init, "fit_linear_head", lambda *a, **k: probes.append(1) or fit(*a, **k))
    # 32 px images of 16 patches, of which token keep 0.5 keeps 8 (the minimum lowered from 32 so that it drops).
    flags = ["--time_budget", "12", "--token_keep", "0.5", "--token_keep_min", "4", "--logging_steps", "1"]
    metrics = budget_run(tiny_vit, tiny_data, tmp_path / "out", *flags)
    plan, printed = metrics["time_budget"], capsys.readouterr().out
    rule = f"every token from a random head if {threshold}+"
    assert f"--time_budget 12s (length set after 3 steps, checked as it runs); {rule}" in printed
    assert plan["dropped_epochs"] > 0 and f"fits about {plan['dropped_epochs']:.1f} epochs" in printed
    assert plan["dropped_epochs"] >= threshold if switches else plan["dropped_epochs"] < threshold
    # Two timed training forwards before the first step, then one per step (batch 4, no accumulation).
    assert len(keeps) == metrics["total_steps"] + 2 and metrics["total_steps"] > 20
    if switches:  # thousands of tiny steps fit: 6 steps an epoch
        assert plan["every_token"] and "on every token from a random head" in printed
        assert keeps[:2] == [0.5] * 2 and set(keeps[2:]) == {1.0} and probes == []
    else:
        assert not plan["every_token"] and "on every token" not in printed
        assert set(keeps) == {0.5} and probes == [1]
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "planned_steps" in e][0] == 3  # planned on steps of the chosen recipe


def test_the_timed_step_that_chooses_the_recipe_moves_no_weight_and_draws_no_random_number(tiny_vit):
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageClassification

    from peft_vision_lora.training.budget import TimeBudget
    from peft_vision_lora.training.clock import PhaseClock
    from peft_vision_lora.training.token_dropout import TokenDropoutPart

    model = get_peft_model(AutoModelForImageClassification.from_pretrained(tiny_vit), LoraConfig(r=4))
    with torch.no_grad():  # non-zero B matrices: a gradient step would move what the classifier outputs
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    dropout = TokenDropoutPart(model, 0.5, min_tokens=4, seed=0, image_size=32, rank=0, world_size=1)
    budget = TimeBudget(
        60, saved=None, clock=PhaseClock(), accelerator=Accelerator(cpu=True), step_model=model, loaders={},
        eval_split=None, cadence=NEVER, space_evaluations=False, replan=lambda plan: None, image_size=32,
        batch_size=4, accumulation=3, token_dropout=dropout,
    )  # fmt: skip
    rng = torch.get_rng_state()
    assert budget._step_seconds() > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(param, before[name]) for name, param in model.named_parameters())
    assert all(param.grad is None for param in model.parameters())


def test_time_budget_too_small_stops_naming_the_step_time(tiny_vit, tiny_data, tmp_path):
    with pytest.raises(BudgetError, match=r"--time_budget 1s cannot hold .* one step takes \d+\.\d\ds"):
        budget_run(tiny_vit, tiny_data, tmp_path / "out", "--time_budget", "1s")


def test_time_budget_refuses_what_fixes_the_length(tiny_vit, tiny_data, tmp_path):
    with pytest.raises(ValueError, match="--time_budget and --max_steps"):
        budget_run(tiny_vit, tiny_data, tmp_path / "a", "--time_budget", "60", "--max_steps", "5")
    with pytest.raises(ValueError, match="--resolution_schedule .* --time_budget"):
        budget_run(tiny_vit, tiny_data, tmp_path / "b", "--time_budget", "60", "--resolution_schedule", "16", "32")


@pytest.mark.parametrize("tokens", [[], ["--token_keep_min", "4"]], ids=["every-token", "switched-to-every-token"])
def test_resumed_budget_run_keeps_its_plan_and_ends_with_the_same_weights(
    tiny_vit, tiny_data, tmp_path, monkeypatch, tokens
):
    # Re-plans stop at half the budget (not four fifths): a checkpoint always follows the last one, however much
    # slower a loaded machine runs than the plan expected.
    monkeypatch.setattr("peft_vision_lora.training.budget.LAST_PLAN", 0.5)
    flags = ["--time_budget", "10", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "1000"]
    first = budget_run(tiny_vit, tiny_data, tmp_path / "a", *flags, *tokens)
    # With tokens dropped, the budget's many epochs turn dropout off at the first plan: resuming must keep it off.
    assert first["time_budget"]["every_token"] == bool(tokens)
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    plans = [e for e in log if "planned_steps" in e]  # the first plan at step 3, then a re-plan each second
    assert plans[0]["step"] == 3 and 1 <= len(plans) <= 7 and plans[-1]["planned_steps"] == first["total_steps"]
    # The first checkpoint written under the final plan; the run folder as it was then (later checkpoints removed).
    checkpoints = list_checkpoints(tmp_path / "a")
    checkpoint = next((c for c in checkpoints if int(c.name.split("-")[1]) >= plans[-1]["step"]), None)
    assert checkpoint, f"no checkpoint after the last plan: {plans}, {[c.name for c in checkpoints]}"
    assert TrainerState.load(checkpoint).budget == first["time_budget"]
    resumed_dir = tmp_path / "b"
    shutil.copytree(tmp_path / "a", resumed_dir)
    for later in list_checkpoints(resumed_dir):
        if later.name != checkpoint.name:
            shutil.rmtree(later)
    second = budget_run(tiny_vit, tiny_data, resumed_dir, *flags, *tokens, "--resume_from_checkpoint", "latest")
    assert second["time_budget"] == first["time_budget"] and second["total_steps"] == first["total_steps"]
    # The resumed run evaluates where the first one did after that checkpoint (the plan's spacing is kept).
    after = int(checkpoint.name.split("-")[1])
    evaluated = [
        [e["step"] for e in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
         if "eval_top1_accuracy" in e and e["step"] > after]
        for out in (tmp_path / "a", resumed_dir)
    ]  # fmt: skip
    assert evaluated[0] == evaluated[1][-len(evaluated[0]) :], (evaluated, plans)
    assert adapter_difference(tmp_path / "a", resumed_dir) == 0, (evaluated, plans, checkpoint.name)


@pytest.mark.slow
def test_budget_run_killed_mid_run_resumes_to_the_same_weights_from_any_checkpoint(tiny_vit, tiny_data, tmp_path):
    """SIGKILL after step 21 of a --time_budget run; resuming from checkpoint 8 and from checkpoint 20 must both keep
    the checkpoint's plan and end with identical weights (the one from 8 retrains steps 9-20 exactly)."""
    # 24 s: a fresh process's start-up alone takes 8-12 s on a shared 2-core machine, and the plan must reach step 21.
    flags = ["--time_budget", "24", "--save_strategy", "steps", "--save_steps", "4", "--save_total_limit", "1000"]
    out = tmp_path / "killed"
    base = ["--model", str(tiny_vit), "--dataset", str(tiny_data), "--output_dir", str(out), "--disable_tqdm"]
    command = [sys.executable, str(FREEZE_DRIVER), "21", *base, "--per_device_train_batch_size", "4", *flags]
    env = {**os.environ, "BUDGET_PLANS_ONCE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        printed = []
        for line in iter(process.stdout.readline, ""):
            printed.append(line.strip())
            if printed[-1] == "FROZEN":
                break
        assert printed[-1] == "FROZEN", f"the run ended before step 21: {printed}"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    checkpoints = list_checkpoints(out)
    assert [c.name for c in checkpoints] == [f"checkpoint-{s}" for s in (4, 8, 12, 16, 20)]
    assert not (out / "adapter_model.safetensors").exists()
    plan = TrainerState.load(checkpoints[-1]).budget
    assert plan["steps_done"] == 3 and plan["total_steps"] > 21, plan
    assert TrainerState.load(checkpoints[1]).budget == plan
    assert any(line.startswith(f"Time budget 24s: {plan['total_steps']} steps") for line in printed)

    early = tmp_path / "from-8"
    shutil.copytree(out, early)
    for later in list_checkpoints(early)[2:]:
        shutil.rmtree(later)
    late = budget_run(tiny_vit, tiny_data, out, *flags, "--resume_from_checkpoint", "latest")
    again = budget_run(tiny_vit, tiny_data, early, *flags, "--resume_from_checkpoint", "latest")
    assert late["time_budget"] == again["time_budget"] == plan
    assert late["total_steps"] == again["total_steps"] == plan["total_steps"] == late["steps_done"]
    assert adapter_difference(out, early) == 0
    assert late["test"]["loss"] == again["test"]["loss"]
