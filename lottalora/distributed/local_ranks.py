"""Multi-process code on one machine: processes joined by gloo on 127.0.0.1 (a free port).

    codes, outputs = launch_ranks(lambda rank, port: ["-m", "my.module", str(rank), str(port)],
                                  world_size=2, timeout=120)
    # in each process:
    join_group(rank, world_size, port); ...; leave_group(); exit_rank(0)

What the distributed tests and benchmarks use to run FSDP2 and tensor-parallel code on CPUs;
usable for trying a model's parallel plan the same way. Ranks share no memory, so each one's
peak RSS is its own.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_PORT_RETRIES = 3


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(rank_argv: Callable[[int, int], list[str]], world_size: int, timeout: float,
                 cwd: str | os.PathLike | None = None) -> tuple[list[int | None], list[str]]:
    """Run ``python *rank_argv(rank, port)`` for every rank in ``cwd`` (default: the current
    directory, which also goes first on the ranks' PYTHONPATH), each process's stdout and stderr
    captured; returns (exit codes, None for a rank killed at ``timeout``; outputs).

    A failed rank ends the wait (the others would only block on it). A free port can be taken
    by someone else between ``free_port`` and rank 0's bind: a run that fails with "address
    already in use" is tried again on a new port.
    """
    for _ in range(_PORT_RETRIES):
        codes, outputs = _launch_once(rank_argv, world_size, timeout, Path(cwd or os.getcwd()))
        if all(c == 0 for c in codes) or not any("address already in use" in o.lower() for o in outputs):
            break
    return codes, outputs


def _launch_once(rank_argv, world_size: int, timeout: float, cwd: Path) -> tuple[list[int | None], list[str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")])}
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        paths = [Path(logs) / f"rank{r}.out" for r in range(world_size)]
        procs = []
        for rank, path in enumerate(paths):
            with open(path, "wb") as out:
                procs.append(subprocess.Popen([sys.executable, *rank_argv(rank, port)], cwd=cwd, env=env,
                                              stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                time.sleep(2)
                break
            time.sleep(0.1)
        codes = [p.poll() for p in procs]
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        return codes, [path.read_text(errors="replace") for path in paths]


def rank_report(codes: list[int | None], outputs: list[str], tail: int = 4000) -> str:
    return "\n".join(f"--- rank {r}: exit {'timeout' if c is None else c} ---\n{o[-tail:]}"
                     for r, (c, o) in enumerate(zip(codes, outputs, strict=True)))


def join_group(rank: int, world_size: int, port: int, timeout_s: float = 1800) -> None:
    """The default process group for this rank: gloo, 127.0.0.1:``port``, one torch thread,
    collectives timing out after ``timeout_s``."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def leave_group() -> None:
    """Wait for every rank, then tear the group down: rank 0 hosts the TCP store, and a rank
    still tearing down its gloo threads when rank 0 leaves can die in std::terminate."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def exit_rank(code: int = 0) -> None:
    """End a rank's process now, its output flushed. After the group is destroyed, gloo's threads
    can still abort the interpreter's teardown ("terminate called without an active exception",
    exit -6, seen in loaded full-suite runs) after the rank's work and output were complete."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


