"""The kernels' dtype rules: which Triton dtype a torch dtype is, what ``tl.dot`` multiplies in,
and how float32 results are rounded to the output dtype."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .runtime import is_interpreting

TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def dot_dtype(dtype: torch.dtype):
    """The dtype tl.dot operands are cast to for inputs of ``dtype``.

    The interpreter's bf16 dot returns garbage (Triton 3.9), so interpreted bf16 runs upcast the
    operands to float32: the bf16-rounded values are kept exactly, only the multiply happens
    wider. On a GPU the operands stay in the input dtype.
    """
    if dtype == torch.bfloat16 and is_interpreting():
        return tl.float32
    return TL_DTYPES[dtype]


def fp32_input_precision() -> str:
    """tl.dot precision for float32 inputs, following torch's matmul precision setting."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


# Fixed at import, as @triton.jit's own choice between interpreter and compiler is.
_INTERPRETING = tl.constexpr(is_interpreting())


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """float32 -> DTYPE, rounding to nearest even as a GPU's cvt.rn does.

    The interpreter casts float32 -> bfloat16 by truncation whatever rounding is asked for
    (Triton 3.9), so there the rounding is done on the bits first and the cast is then exact.
    Values here are finite (no NaN handling needed).
    """
    if DTYPE == tl.float32:
        return x
    elif _INTERPRETING and DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(DTYPE)
    else:
        return x.to(DTYPE)
