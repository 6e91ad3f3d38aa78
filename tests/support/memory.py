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


def peak_bytes_added(setup: str, step: str) -> int:
    """The resident bytes ``step`` adds at its peak above everything ``setup`` left (both Python
    source, run in a fresh process on the torch backend with one thread). ``setup`` should warm
    up imports and first calls, so that the step's temporaries are what is measured."""
    code = _RUNNER.format(setup=textwrap.dedent(setup), step=textwrap.dedent(step))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.strip().splitlines()[-1])
