"""Gluon, where this Triton ships it, and the fallback from a Gluon kernel to its plain-Triton twin.

Every Gluon kernel has a plain-Triton twin that computes the same values (the interpreter runs
the twins in CI). ``gluon_jit`` gives None for a Gluon kernel when Gluon is missing, and
``run_fast_path`` turns a compile failure of a Gluon kernel on an unchecked Triton version into
the twin's launch, with one warning: a moved Gluon API costs speed, never a user's run.
"""

from __future__ import annotations

import warnings

import triton
from triton.compiler.errors import CompilationError

try:  # Gluon ships with Triton >= 3.5; without it only the plain-Triton twins run
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
except ImportError:  # pragma: no cover
    gluon = gl = None


def gluon_available() -> bool:
    """Whether this Triton ships Gluon (triton.experimental.gluon)."""
    return gluon is not None


def gluon_jit(**options):
    """gluon.jit(**options) as a decorator, or one that gives None when Gluon is missing."""
    def decorate(fn):
        return gluon.jit(fn, **options) if gluon is not None else None
    return decorate


_GLUON_FAILURES: dict[str, str] = {}


def gluon_failed(name: str) -> bool:
    """Whether the Gluon kernel ``name`` failed to compile in this process (see run_fast_path)."""
    return name in _GLUON_FAILURES


def run_fast_path(name: str, fast, twin):
    """fast() if Gluon kernel ``name`` compiles here, else twin() from then on, with one warning.

    The Gluon kernels are compiled and counted for sm_90 in CI with Triton 3.6 and 3.9; a GPU's
    own Triton may be another version whose Gluon API has moved.
    """
    if name not in _GLUON_FAILURES:
        try:
            return fast()
        except CompilationError as exc:
            _GLUON_FAILURES[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            warnings.warn(f"lottalora: the Gluon kernel {name} does not compile with Triton {triton.__version__} "
                          f"({_GLUON_FAILURES[name]}); using its plain-Triton twin (same values, slower)",
                          RuntimeWarning, stacklevel=3)
    return twin()
