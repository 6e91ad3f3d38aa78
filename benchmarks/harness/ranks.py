"""The distributed benchmarks' ranks: each runs ``python -m MODULE --as-rank RANK WORLD PORT
ARGS...``; its main calls ``serve_as_rank``, which joins the group, measures and prints one JSON
line last. Built on ``lottalora.distributed.local_ranks``.

    rows = run_on_ranks("benchmarks.fsdp_bytes", ["--one", "35M", "lottalora"], world_size=2)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lottalora.distributed.local_ranks import exit_rank, join_group, launch_ranks, leave_group, rank_report

ROOT = Path(__file__).resolve().parents[2]  # the ranks run benchmark modules from the repository


def run_on_ranks(module: str, argv: list[str], world_size: int = 2, timeout: float = 3600) -> list[dict]:
    """Each benchmark rank's last JSON line; RuntimeError with the ranks' output if one fails."""
    codes, outputs = launch_ranks(
        lambda rank, port: ["-m", module, "--as-rank", str(rank), str(world_size), str(port), *argv],
        world_size, timeout, cwd=ROOT)
    if any(c != 0 for c in codes):
        raise RuntimeError(f"{module} {' '.join(argv)} failed:\n{rank_report(codes, outputs)}")
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


def serve_as_rank(as_rank: list[int], measure: Callable[..., dict], *args) -> None:
    """A benchmark's ``--as-rank RANK WORLD PORT`` branch: join, ``measure(rank, world, *args)``,
    leave, print the row as the last JSON line and end the process."""
    rank, world, port = as_rank
    join_group(rank, world, port)
    row = measure(rank, world, *args)
    leave_group()
    print(json.dumps(row), flush=True)
    exit_rank(0)
