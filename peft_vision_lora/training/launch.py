"""A check on how the run was launched: several machines asked for, one process started.

``accelerate launch --num_machines 2 --machine_rank R ...`` without ``--multi_gpu`` (or another distributed mode)
starts the script as a plain process on each machine: each trains alone on the whole dataset and all of them write
the same output folder. The launcher leaves a trace of what was asked: for several machines (or processes) it
exports ``MASTER_ADDR``/``MASTER_PORT`` for the rendezvous, but without a distributed mode it starts no process group
(no ``WORLD_SIZE``), so the run sees one process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


class LaunchError(RuntimeError):
    """The launcher asked for several machines or processes, but this run is a single process."""


def check_launch(num_processes: int, env: Mapping[str, str] | None = None) -> None:
    """Stop at start when ``accelerate launch`` prepared a rendezvous but the run has one process."""
    env = os.environ if env is None else env
    launched = "ACCELERATE_MIXED_PRECISION" in env or "ACCELERATE_DYNAMO_BACKEND" in env  # set by accelerate launch
    if num_processes != 1 or not launched or "MASTER_ADDR" not in env or "WORLD_SIZE" in env:
        return
    raise LaunchError(
        f"accelerate launch prepared a rendezvous at {env['MASTER_ADDR']}:{env.get('MASTER_PORT', '?')} (it does so "
        "for --num_machines > 1 or --num_processes > 1), but this run has one process: each launcher would train "
        "alone and they would all write the same output folder. Add --multi_gpu to every launcher (on CPUs also set "
        "ACCELERATE_USE_CPU=1, which uses gloo), with --num_processes the total over all machines, e.g. "
        "`accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 --num_processes 2 --main_process_ip "
        "HOST --main_process_port PORT examples/train.py ...`; or drop --num_machines/--main_process_ip to train on "
        "one machine."
    )
