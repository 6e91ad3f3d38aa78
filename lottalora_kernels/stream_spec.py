"""The constants that define the backbone stream, shared by every implementation of it.

This module is the single source of truth for the numbers in ``docs/backbone.md``: the Triton
tile generator (``lottalora_kernels.backbone_tile``) and the PyTorch reference
(``lottalora.stream``) both read them from here, and tests hold the two bit-equal. It imports
nothing heavy so that it can be used without Triton.

Changing any value here changes every seeded model's weights: bump ``STREAM_VERSION`` and keep
the old definition loadable instead.
"""

from __future__ import annotations

import math

import numpy as np

STREAM_VERSION = 1
SUPPORTED_STREAM_VERSIONS = (1,)

# Philox4x32 (Salmon et al., SC'11) with the Random123 constants; ten rounds is the
# Random123 default and the generator's tested-safe count (7 already passes BigCrush).
PHILOX_ROUNDS = 10
PHILOX_ROUND_A = 0xD2511F53  # multiplies counter word 0
PHILOX_ROUND_B = 0xCD9E8D57  # multiplies counter word 2
PHILOX_KEY_A = 0x9E3779B9  # added to key word 0 after each round
PHILOX_KEY_B = 0xBB67AE85  # added to key word 1 after each round

# Init names in code order: the code is what kernels receive as a constexpr.
INITS = ("gaussian", "uniform", "rademacher")
INIT_CODES = {name: code for code, name in enumerate(INITS)}

UINT64_MAX = 2**64 - 1


def _f32(value: float) -> float:
    """Round a Python float to the nearest float32 and return it as a Python float."""
    return float(np.float32(value))


# Box-Muller pieces as fixed float32 polynomials (fitted once, then frozen here): libm's and
# libdevice's log/sin/cos are not required to agree to the bit, these products and sums are.
LN2 = _f32(math.log(2.0))
# ln(1 + t) ~= t * P(t) on t in [0, 1), coefficients of P from t^0 upwards.
LOG1P_COEFFS = tuple(
    _f32(float.fromhex(h))
    for h in (
        "0x1.ffffe6p-1", "-0x1.fff78ep-2", "0x1.54d9f4p-2", "-0x1.f8ee5cp-3", "0x1.7b3de0p-3",
        "-0x1.02157ep-3", "0x1.133f4ap-4", "-0x1.7f154cp-6", "0x1.f555eap-9",
    )
)
# sin(pi/2 * f) ~= f * S(f^2) and cos(pi/2 * f) ~= C(f^2) on f in [0, 1), lowest power first.
SIN_COEFFS = (
    _f32(1.570796251296997), _f32(-0.6459634304046631), _f32(0.07968873530626297),
    _f32(-0.004672547802329063), _f32(0.0001509560242993757),
)
COS_COEFFS = (
    _f32(1.0), _f32(-1.2337005138397217), _f32(0.2536693513393402),
    _f32(-0.020862746983766556), _f32(0.0009177866159006953), _f32(-2.3848322598496452e-05),
)
TWO_POW_M23 = 2.0**-23
TWO_POW_M24 = 2.0**-24


def backbone_std(in_features: int) -> float:
    """float32(1 / sqrt(in_features)): the std of "gaussian" and the bound of the others."""
    return _f32(1.0 / math.sqrt(in_features))


def value_scale(in_features: int, init: str) -> float:
    """The one float32 factor a kernel multiplies into every value of ``init``.

    gaussian: the std; uniform: bound * 2^-23 (applied to a centred 24-bit integer);
    rademacher: the bound. All are exact float32 values.
    """
    std = backbone_std(in_features)
    if init == "uniform":
        return std * TWO_POW_M23  # a power-of-two scaling: exact
    return std


def split_u64(value: int) -> tuple[int, int]:
    """(low 32 bits, high 32 bits) of an unsigned 64-bit integer."""
    return value & 0xFFFFFFFF, value >> 32
