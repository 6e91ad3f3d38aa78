"""Philox4x32 in Triton: the one implementation every stream version's generator calls.

Random123's constants (``stream.spec``); the PyTorch twin is ``lottalora.backbone.philox`` and tests hold
both to Random123's known-answer vectors. Plain ``@triton.jit`` so that Gluon kernels can call it
too (a JIT function takes its caller's layouts).
"""

import triton
import triton.language as tl

from . import spec

_ROUND_A = tl.constexpr(spec.PHILOX_ROUND_A)
_ROUND_B = tl.constexpr(spec.PHILOX_ROUND_B)
_KEY_A = tl.constexpr(spec.PHILOX_KEY_A)
_KEY_B = tl.constexpr(spec.PHILOX_KEY_B)
PHILOX_ROUNDS = tl.constexpr(spec.PHILOX_ROUNDS)


@triton.jit
def philox4x32(k0, k1, c0, c1, c2, c3, N_ROUNDS: tl.constexpr = PHILOX_ROUNDS):
    """Philox4x32 with the Random123 constants: uint32 key (k0, k1), uint32 counter (c0..c3).

    N_ROUNDS other than the streams' 10 is for instruction-count probes only."""
    for _ in tl.static_range(N_ROUNDS):
        hi_b = tl.umulhi(c2, _ROUND_B)
        hi_a = tl.umulhi(c0, _ROUND_A)
        lo_b = c2 * _ROUND_B
        lo_a = c0 * _ROUND_A
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = k0 + _KEY_A
        k1 = k1 + _KEY_B
    return c0, c1, c2, c3
