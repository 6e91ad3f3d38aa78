"""Philox4x32 in PyTorch on uint32 values held in int64 tensors (any device, no Triton).

Shared by the PyTorch twins of every stream version (``stream_v1``, ``stream_v2``). Products
are split into 16-bit halves so that nothing overflows int64.
"""

from __future__ import annotations

import torch

from lottalora_kernels import stream_spec as spec

MASK32 = 0xFFFFFFFF


def _mulhilo(constant: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of constant * x for uint32 values held in int64."""
    c_lo, c_hi = constant & 0xFFFF, constant >> 16
    p_lo = x * c_lo  # < 2^48
    p_hi = x * c_hi  # < 2^48
    high = ((p_lo >> 16) + p_hi) >> 16
    low = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    return high, low


def philox4x32(key: tuple[int, int], counter: tuple[torch.Tensor, ...], rounds: int = spec.PHILOX_ROUNDS):
    """Philox4x32 (Random123 constants) of uint32 ``counter`` words under the uint32 ``key``
    pair; returns the four output word tensors (int64, values in [0, 2^32))."""
    k0, k1 = key
    c0, c1, c2, c3 = counter
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo(spec.PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(spec.PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + spec.PHILOX_KEY_A) & MASK32
        k1 = (k1 + spec.PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3
