"""Peak memory of a few lines of code, measured in a fresh process (ru_maxrss is a high-water
mark: only a process of its own shows what one step adds)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from .processes import ROOT

_RUNNER = """
import os, resource, sys
os.environ.setdefault("LOTTALORA_BACKEND", "torch")
import torch
torch.set_num_threads(1)
{setup}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
{step}
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


def _command(setup: str, step: str) -> list[str]:
    return [sys.executable, "-c", _RUNNER.format(setup=textwrap.dedent(setup), step=textwrap.dedent(step))]


def _peak(out: str, err: str, returncode: int) -> int:
    assert returncode == 0, err[-3000:]
    return int(out.strip().splitlines()[-1])


def peak_bytes_added(setup: str, step: str) -> int:
    """The resident bytes ``step`` adds at its peak above everything ``setup`` left (both Python
    source, run in a fresh process on the torch backend with one thread). ``setup`` should warm
    up imports and first calls, so that the step's temporaries are what is measured."""
    out = subprocess.run(_command(setup, step), cwd=ROOT, capture_output=True, text=True)
    return _peak(out.stdout, out.stderr, out.returncode)


def peak_bytes_added_each(runs: list[tuple[str, str]]) -> list[int]:
    """``peak_bytes_added`` of each (setup, step), the processes run side by side: each measures
    its own high-water mark, so they need not wait for one another."""
    procs = [subprocess.Popen(_command(setup, step), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for setup, step in runs]
    return [_peak(*p.communicate(), p.returncode) for p in procs]
