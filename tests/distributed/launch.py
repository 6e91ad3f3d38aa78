"""Run a test function on several fresh processes joined by gloo on 127.0.0.1.

    run_ranks("tests.distributed.test_x:_on_each_rank", world_size=2, timeout=120, args=[...])

Each rank is ``python -m tests.distributed.launch MODULE:FUNCTION RANK WORLD PORT ARGS_JSON``:
it joins a process group (a TCP store on a free port of 127.0.0.1, collectives time out after
``COLLECTIVE_TIMEOUT_S``), calls ``FUNCTION(rank, world_size, *args)`` and exits 0, or prints
the traceback and exits 1. ``run_ranks`` fails the calling test when any rank fails or the
whole run passes ``timeout`` seconds (then every rank is killed), showing each rank's output.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLLECTIVE_TIMEOUT_S = 90
_PORT_RETRIES = 3


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_once(target: str, world_size: int, timeout: float, args: list) -> tuple[list[int | None], list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        paths = [Path(logs) / f"rank{r}.log" for r in range(world_size)]
        procs = []
        for rank, path in enumerate(paths):
            with open(path, "wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tests.distributed.launch", target, str(rank), str(world_size), str(port),
                     json.dumps(args)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        codes: list[int | None] = [None] * world_size
        while time.monotonic() < deadline and any(c is None for c in codes):
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):  # one rank failed: the others would only wait
                time.sleep(2)
                codes = [p.poll() for p in procs]
                break
            time.sleep(0.1)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        return codes, [path.read_text(errors="replace") for path in paths]


def run_ranks(target: str, *, world_size: int = 2, timeout: float = 150, args: list | None = None) -> None:
    """Run ``target`` on ``world_size`` ranks; AssertionError with every rank's output on failure."""
    for attempt in range(_PORT_RETRIES):
        codes, outputs = _run_once(target, world_size, timeout, list(args or []))
        if all(c == 0 for c in codes):
            return
        if not any("address already in use" in o.lower() for o in outputs) or attempt == _PORT_RETRIES - 1:
            break
    report = "\n".join(f"--- rank {r}: exit {'timeout' if c is None else c} ---\n{o[-6000:]}"
                       for r, (c, o) in enumerate(zip(codes, outputs, strict=True)))
    raise AssertionError(f"{target} failed on {world_size} ranks (timeout {timeout} s):\n{report}")


def _main(target: str, rank: str, world_size: str, port: str, args_json: str) -> int:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank_, world = int(rank), int(world_size)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank_, world_size=world,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        module_name, _, function = target.partition(":")
        getattr(importlib.import_module(module_name), function)(rank_, world, *json.loads(args_json))
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        return 1
    # Rank 0 hosts the TCP store: were it to exit while another rank still tears down its gloo
    # threads, that rank dies in std::terminate (seen once under a loaded full suite).
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_code = _main(*sys.argv[1:])
    # Skip the interpreter's teardown: gloo's threads can abort it (exit -6, "terminate called
    # without an active exception") after the rank's work and output were complete.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
