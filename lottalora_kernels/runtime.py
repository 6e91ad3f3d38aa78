"""Launch-time helpers shared by the launchers: interpreter detection and scalar packing."""

from __future__ import annotations

import os

import torch
import triton.language as tl


def is_interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def new_output(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty for kernel outputs; NaN-filled when LOTTALORA_POISON_OUTPUTS=1 (the test
    suite sets it) so that an element a kernel forgets to write cannot pass for a value."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if os.environ.get("LOTTALORA_POISON_OUTPUTS", "0") == "1" and out.is_floating_point():
        out.fill_(float("nan"))
    return out


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
