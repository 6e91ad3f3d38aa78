"""Run a benchmark's per-rank function on several processes (gloo on 127.0.0.1, a free port).

    rows = run_on_ranks("benchmarks.fsdp_bytes", ["--config", "35M"], world_size=2)

Each rank runs ``python -m MODULE --as-rank RANK WORLD PORT ARGS...``; the module's main joins
the group with ``join_group`` and prints one JSON line last. Ranks share no memory, so each one's
peak RSS is its own.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PORT_RETRIES = 3


def run_on_ranks(module: str, argv: list[str], world_size: int = 2, timeout: float = 3600) -> list[dict]:
    """Each rank's last stdout line, parsed as JSON; RuntimeError with the ranks' output if one fails.

    A free port can be taken by someone else between ``free_port`` and rank 0's bind: a run that
    fails with "address already in use" is tried again on a new port (as tests/distributed does).
    """
    for attempt in range(_PORT_RETRIES):
        procs, outputs = _run_once(module, argv, world_size, timeout)
        collided = any("address already in use" in o.lower() for o in outputs)
        if not (collided and any(p.returncode != 0 for p in procs)) or attempt == _PORT_RETRIES - 1:
            break
    if any(p.returncode != 0 for p in procs):
        report = "\n".join(f"--- rank {r}: exit {p.returncode} ---\n{o[-4000:]}"
                           for r, (p, o) in enumerate(zip(procs, outputs, strict=True)))
        raise RuntimeError(f"{module} {' '.join(argv)} failed:\n{report}")
    return [_last_json_line(o) for o in outputs]


def _last_json_line(output: str) -> dict:
    """The rank's result: its last line that is a JSON object (stderr shares the file, and a
    warning printed at interpreter exit may come after it)."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise RuntimeError(f"a rank printed no JSON result:\n{output[-4000:]}")


def _run_once(module: str, argv: list[str], world_size: int, timeout: float):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        paths = [Path(logs) / f"rank{r}.out" for r in range(world_size)]
        procs = []
        for rank, path in enumerate(paths):
            with open(path, "wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", module, "--as-rank", str(rank), str(world_size), str(port), *argv],
                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                time.sleep(2)
                break
            time.sleep(0.2)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        outputs = [path.read_text(errors="replace") for path in paths]
    return procs, outputs


def join_group(rank: int, world_size: int, port: int) -> None:
    """The default process group for this rank: gloo, 127.0.0.1:``port``, one torch thread."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=30))


def exit_rank(code: int = 0) -> None:
    """End a rank's process now, its output flushed. After the group is destroyed, gloo's threads
    can still abort the interpreter's teardown ("terminate called without an active exception",
    exit -6, seen in loaded full-suite runs) after the rank's work and output were complete."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def leave_group() -> None:
    """Wait for every rank, then tear the group down (a gloo group left to the interpreter's exit
    can abort the process)."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
