"""Running code compiled rather than interpreted, in a process of its own (the test process has
TRITON_INTERPRET set when there is no GPU: its kernels are interpreted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def skip_without_ptxas() -> None:
    """Skip the calling test module unless Triton and its bundled ptxas are installed (what
    compiling for sm_90 without a GPU needs)."""
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("Triton's bundled ptxas is missing", allow_module_level=True)


def run_uninterpreted(*argv: str) -> subprocess.CompletedProcess:
    """``python argv...`` from the repository root without TRITON_INTERPRET (the test process has
    it: its kernels are interpreted), asserting success; the stdout and stderr are captured."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


FIXTURES = ROOT / "tests" / "fixtures"
