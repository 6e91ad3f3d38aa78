"""Philox4x32 in PyTorch on uint32 values held in int64 tensors (any device, no Triton).

Shared by the PyTorch twins of every stream version (``stream_v1``, ``stream_v2``). A 32 x 32
bit product needs 64 bits: it is formed in int64, which wraps modulo 2^64 on every device
torch runs on (two's complement), so its low and high 32-bit halves are exact; Random123's
known-answer vectors and an independent NumPy uint64 implementation hold this in the tests.
"""

from __future__ import annotations

import torch

from lottalora_kernels.stream import spec

MASK32 = 0xFFFFFFFF


def philox4x32(key: tuple[int, int], counter: tuple[torch.Tensor, ...], rounds: int = spec.PHILOX_ROUNDS):
    """Philox4x32 (Random123 constants) of uint32 ``counter`` words under the uint32 ``key``
    pair; returns the four output word tensors (int64, values in [0, 2^32))."""
    k0, k1 = key
    c0, c1, c2, c3 = counter
    for _ in range(rounds):
        # mulhi/mullo of each multiply from one int64 product; fresh tensors are updated in
        # place (CPU training calls this on small layers, where each allocation shows).
        product_b = c2 * spec.PHILOX_ROUND_B
        product_a = c0 * spec.PHILOX_ROUND_A
        next_c0 = (product_b >> 32).bitwise_and_(MASK32).bitwise_xor_(c1).bitwise_xor_(k0)
        next_c2 = (product_a >> 32).bitwise_and_(MASK32).bitwise_xor_(c3).bitwise_xor_(k1)
        c0, c1, c2, c3 = next_c0, product_b.bitwise_and_(MASK32), next_c2, product_a.bitwise_and_(MASK32)
        k0 = (k0 + spec.PHILOX_KEY_A) & MASK32
        k1 = (k1 + spec.PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3
