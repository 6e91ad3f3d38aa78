"""Run a test function on several fresh processes joined by gloo on 127.0.0.1.

    run_ranks("tests.distributed.test_x:_on_each_rank", world_size=2, timeout=120, args=[...])

Each rank is ``python -m tests.distributed.launch MODULE:FUNCTION RANK WORLD PORT ARGS_JSON``,
started by ``lottalora.distributed.local_ranks.launch_ranks``: it joins a process group (a TCP store on a free
port of 127.0.0.1, collectives time out after ``COLLECTIVE_TIMEOUT_S``), calls
``FUNCTION(rank, world_size, *args)`` and exits 0, or prints the traceback and exits 1.
``run_ranks`` fails the calling test when any rank fails or the whole run passes ``timeout``
seconds (then every rank is killed), showing each rank's output.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback

from lottalora.distributed.local_ranks import exit_rank, join_group, launch_ranks, leave_group, rank_report
from tests.support.processes import ROOT

COLLECTIVE_TIMEOUT_S = 90


def run_ranks(target: str, *, world_size: int = 2, timeout: float = 150, args: list | None = None) -> None:
    """Run ``target`` on ``world_size`` ranks; AssertionError with every rank's output on failure."""
    codes, outputs = launch_ranks(
        lambda rank, port: ["-m", "tests.distributed.launch", target, str(rank), str(world_size), str(port),
                            json.dumps(list(args or []))],
        world_size, timeout, cwd=ROOT)
    if any(c != 0 for c in codes):
        raise AssertionError(f"{target} failed on {world_size} ranks (timeout {timeout} s):\n"
                             f"{rank_report(codes, outputs, tail=6000)}")


def _main(target: str, rank: str, world_size: str, port: str, args_json: str) -> int:
    rank_, world = int(rank), int(world_size)
    join_group(rank_, world, int(port), timeout_s=COLLECTIVE_TIMEOUT_S)
    try:
        module_name, _, function = target.partition(":")
        getattr(importlib.import_module(module_name), function)(rank_, world, *json.loads(args_json))
    except BaseException:
        traceback.print_exc()
        return 1
    leave_group()
    return 0


if __name__ == "__main__":
    exit_rank(_main(*sys.argv[1:]))
