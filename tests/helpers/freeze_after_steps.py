"""Run ``examples/train.py`` but freeze after N optimizer steps, printing FROZEN, so a test can SIGKILL it mid-run.

Usage: ``python freeze_after_steps.py N [examples/train.py options]``. With ``BUDGET_PLANS_ONCE=1`` in the environment
a ``--time_budget`` run plans its length once (at step 3) and never re-plans, so that all its checkpoints hold the
same plan and resuming from any of them must end with the same weights.
"""

import math
import os
import runpy
import sys
import time
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train.py"
freeze_after = int(sys.argv.pop(1))
adamw_step = torch.optim.AdamW.step
steps = 0


def counting_step(self, *args, **kwargs):
    global steps
    result = adamw_step(self, *args, **kwargs)
    steps += 1
    if steps == freeze_after:
        # One write of the whole line: the ranks of a launch share the pipe, and print's two writes ("FROZEN", then
        # "\n") of two ranks could interleave into "FROZENFROZEN", which the test would never see.
        os.write(sys.stdout.fileno(), b"FROZEN\n")
        # Wait to be killed; a rank whose launcher was killed (it is then orphaned) exits rather than linger an hour.
        parent, deadline = os.getppid(), time.monotonic() + 3600
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.2)
        os._exit(1)
    return result


torch.optim.AdamW.step = counting_step
if os.environ.get("BUDGET_PLANS_ONCE"):
    from peft_vision_lora.training import budget

    budget.REPLAN_EVERY = math.inf
sys.argv[0] = str(EXAMPLE)
runpy.run_path(str(EXAMPLE), run_name="__main__")
