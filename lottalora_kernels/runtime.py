"""Launch-time helpers shared by the launchers: interpreter detection and scalar packing."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.compiler.errors import CompilationError

from .allocation import new_output  # noqa: F401  (launchers import it from here)


def is_interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


try:  # Gluon ships with Triton >= 3.5; without it only the plain-Triton twins run
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
except ImportError:  # pragma: no cover
    gluon = gl = None


def gluon_available() -> bool:
    """Whether this Triton ships Gluon (triton.experimental.gluon)."""
    return gluon is not None


_GLUON_FAILURES: dict[str, str] = {}


def gluon_failed(name: str) -> bool:
    """Whether the Gluon kernel ``name`` failed to compile in this process (see run_fast_path)."""
    return name in _GLUON_FAILURES


def run_fast_path(name: str, fast, twin):
    """fast() if Gluon kernel ``name`` compiles here, else twin() from then on, with one warning.

    The Gluon kernels are compiled and counted for sm_90 in CI with Triton 3.6 and 3.9, but a
    GPU's own Triton may be another version whose Gluon API has moved: a compile error there
    costs speed (the plain-Triton twin computes the same values), never the user's run.
    """
    if name not in _GLUON_FAILURES:
        try:
            return fast()
        except CompilationError as exc:
            import warnings

            _GLUON_FAILURES[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            warnings.warn(f"lottalora: the Gluon kernel {name} does not compile with Triton {triton.__version__} "
                          f"({_GLUON_FAILURES[name]}); using its plain-Triton twin (same values, slower)",
                          RuntimeWarning, stacklevel=3)
    return twin()


def gluon_jit(**options):
    """gluon.jit(**options) as a decorator, or one that gives None when Gluon is missing."""
    def decorate(fn):
        return gluon.jit(fn, **options) if gluon is not None else None
    return decorate


_DEVICE_PROPERTIES: dict[int, object] = {}


def _device_properties(device: torch.device):
    """torch.cuda.get_device_properties, asked once per device: the launchers read it on every
    call."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _DEVICE_PROPERTIES:
        _DEVICE_PROPERTIES[index] = torch.cuda.get_device_properties(index)
    return _DEVICE_PROPERTIES[index]


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device."""
    return _device_properties(device).multi_processor_count


def capability_major(device: torch.device) -> int:
    """A CUDA device's compute capability major version."""
    return _device_properties(device).major


def _as_int32(word: int) -> int:
    """A uint32 bit pattern as the int32 with the same bits (kernels bitcast it back)."""
    return word - (1 << 32) if word >= (1 << 31) else word


def backbone_scalars(seed: int, stream: int) -> tuple[int, int, int, int]:
    """(seed_lo, seed_hi, stream_lo, stream_hi) as int32 kernel arguments."""
    return (
        _as_int32(seed & 0xFFFFFFFF), _as_int32(seed >> 32),
        _as_int32(stream & 0xFFFFFFFF), _as_int32(stream >> 32),
    )


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def dot_dtype(dtype: torch.dtype):
    """The dtype tl.dot operands are cast to for inputs of ``dtype``.

    The interpreter's bf16 dot returns garbage (seen with Triton 3.9), so interpreted bf16 runs
    upcast the operands to float32: the bf16-rounded values are kept exactly, only the
    multiply happens wider. On a GPU the operands stay in the input dtype.
    """
    if dtype == torch.bfloat16 and is_interpreting():
        return tl.float32
    return _TL_DTYPES[dtype]


def fp32_input_precision() -> str:
    """tl.dot precision for float32 inputs, following torch's matmul precision setting."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def narrowed(t: torch.Tensor | None, dim: int, start: int, stop: int) -> torch.Tensor | None:
    """t[start:stop] along ``dim`` (None stays None), or t itself when that is all of it: the
    launchers slice per chunk of rows or of W, usually one chunk covering everything, and each
    view costs the host a few microseconds per call."""
    if t is None or (start == 0 and stop == t.shape[dim]):
        return t
    return t.narrow(dim, start, stop - start)


def cdiv(a: int, b: int) -> int:
    """Ceiling division for launch arithmetic. triton.cdiv is a constexpr function since Triton
    3.9, about 5 us per host call: the two-phase input gradient made 12 of them per call."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), for host code (see ``cdiv``)."""
    return 1 << (n - 1).bit_length()


# Fixed at import, as @triton.jit's own choice between interpreter and compiler is.
_INTERPRETING = tl.constexpr(is_interpreting())


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """float32 -> DTYPE, rounding to nearest even as a GPU's cvt.rn does.

    The interpreter casts float32 -> bfloat16 by truncation whatever rounding is asked for
    (seen with Triton 3.9), so there the rounding is done on the bits first and the cast is
    then exact. Values here are finite (no NaN handling needed).
    """
    if DTYPE == tl.float32:
        return x
    elif _INTERPRETING and DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(DTYPE)
    else:
        return x.to(DTYPE)
