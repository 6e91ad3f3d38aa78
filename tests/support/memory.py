"""Peak memory of a few lines of code, measured in a fresh process: the growth of its resident
set over what it holds when the step starts, from the kernel's high-water mark (VmHWM), reset
just before the step.

Not ru_maxrss: Linux carries a process's maximum across fork and exec, so a child of a large
process (pytest, with everything it imported) starts at its parent's resident size and would
report nothing for any step smaller than that.

glibc's malloc runs with a fixed mmap threshold: by default the threshold grows as large blocks
are freed, so later temporaries land on the heap and stay resident after their free, and the
high-water mark would count the allocator's fragmentation (it moved by 20 MiB between runs of
one step), not the step's live tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from .processes import ROOT

_RUNNER = """
import os, sys
os.environ.setdefault("LOTTALORA_BACKEND", "torch")
import torch
torch.set_num_threads(1)
{setup}
def _status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # the high-water mark restarts at the resident size now
before = _status_kib("VmRSS")
{step}
print((_status_kib("VmHWM") - before) * 1024)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def _command(setup: str, step: str) -> list[str]:
    return [sys.executable, "-c", _RUNNER.format(setup=textwrap.dedent(setup), step=textwrap.dedent(step))]


def _peak(out: str, err: str, returncode: int) -> int:
    assert returncode == 0, err[-3000:]
    return int(out.strip().splitlines()[-1])


def peak_bytes_added(setup: str, step: str) -> int:
    """The resident bytes ``step`` adds at its peak above what the process holds after ``setup``
    (both Python source, run in a fresh process on the torch backend with one thread; Linux).
    ``setup`` should warm up imports and first calls, so that the step's temporaries are what is
    measured."""
    out = subprocess.run(_command(setup, step), cwd=ROOT, env=_env(), capture_output=True, text=True)
    return _peak(out.stdout, out.stderr, out.returncode)


def peak_bytes_added_each(runs: list[tuple[str, str]]) -> list[int]:
    """``peak_bytes_added`` of each (setup, step), the processes run side by side: each measures
    its own high-water mark, so they need not wait for one another."""
    procs = [subprocess.Popen(_command(setup, step), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for setup, step in runs]
    return [_peak(*p.communicate(), p.returncode) for p in procs]
