"""Run ``examples/train.py`` but freeze after N optimizer steps, printing FROZEN, so a test can SIGKILL it mid-run.

Usage: ``python freeze_after_steps.py N [examples/train.py options]``.
"""

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
        print("FROZEN", flush=True)
        time.sleep(3600)
    return result


torch.optim.AdamW.step = counting_step
sys.argv[0] = str(EXAMPLE)
runpy.run_path(str(EXAMPLE), run_name="__main__")
