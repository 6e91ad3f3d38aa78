"""The constants that define the backbone stream, shared by every implementation of it.

This module is the single source of truth for the numbers in ``docs/backbone.md``: the Triton
tile generators (``lottalora_kernels.stream.v1``, ``lottalora_kernels.stream.v2``) and the
PyTorch twins (``lottalora.backbone.stream_v1``, ``lottalora.backbone.stream_v2``) all read them
from here, and tests hold each pair bit-equal. It also owns the one packing of a layer's
(seed, stream) into the four 32-bit words that every generator takes (``words``). It imports
nothing heavy so that it can be used without Triton.

Changing any value here changes every seeded model's weights: bump ``STREAM_VERSION`` and keep
the old definition loadable instead.
"""

from __future__ import annotations

import functools
import math

import numpy as np

STREAM_VERSION = 2  # the newest: what a layer gets when it names no version
SUPPORTED_STREAM_VERSIONS = (1, 2)

# Philox4x32 (Salmon et al., SC'11) with the Random123 constants; ten rounds is the
# Random123 default and the generator's tested-safe count (7 already passes BigCrush).
PHILOX_ROUNDS = 10
PHILOX_ROUND_A = 0xD2511F53  # multiplies counter word 0
PHILOX_ROUND_B = 0xCD9E8D57  # multiplies counter word 2
PHILOX_KEY_A = 0x9E3779B9  # added to key word 0 after each round
PHILOX_KEY_B = 0xBB67AE85  # added to key word 1 after each round

# Init names in code order: the code is what kernels receive as a constexpr and what a layer's
# state_dict records. Codes are shared by all versions; each version provides some of them.
INITS = ("gaussian", "uniform", "rademacher")
INIT_CODES = {name: code for code, name in enumerate(INITS)}
VERSION_INITS = {1: ("gaussian", "uniform", "rademacher"), 2: ("rademacher",)}
DEFAULT_INIT = {1: "gaussian", 2: "rademacher"}

# Stream version 2 (docs/backbone.md): one Philox call gives one bit to each of 128 weights that
# share a residue (o mod 8, i mod 8) inside a 64-row x 128-column span. That is the set of
# values one thread holds in a tensor-core operand fragment, in the forward (W as the A operand)
# and in the input gradient (W^T as the A operand) alike, so each thread generates exactly the
# calls it consumes, whatever the warp's position.
V2_RESIDUE = 8  # rows and columns are split as (block of 8, residue mod 8)
V2_ROW_SPAN = 64  # rows of one call span: 8 row blocks (p = (o div 8) mod 8)
V2_COL_SPAN = 128  # columns of one call span: 16 column blocks (q = (i div 8) mod 16)
V2_MAX_IN_FEATURES = 2**33  # counter word 0 = 64 * (i div 128) + 8 * (o mod 8) + (i mod 8)
V2_MAX_OUT_FEATURES = 2**32  # counter word 1 = o div 64, kept to v1's bound

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


@functools.lru_cache(maxsize=4096)
def backbone_std(in_features: int) -> float:
    """float32(1 / sqrt(in_features)): the std of "gaussian" and the bound of the others (cached:
    launchers ask on every call, and the float32 rounding goes through NumPy)."""
    return _f32(1.0 / math.sqrt(in_features))


def value_scale(in_features: int, init: str, version: int = 1) -> float:
    """The one float32 factor every stream value of ``init`` is multiplied by.

    Version 1 applies it inside the tile generator: gaussian, the std; uniform, bound * 2^-23
    (applied to a centred 24-bit integer); rademacher, the bound. Version 2 generates exact
    +-1 and the kernels apply the std once, in the epilogue, together with beta. All are exact
    float32 values.
    """
    std = backbone_std(in_features)
    if version == 1 and init == "uniform":
        return std * TWO_POW_M23  # a power-of-two scaling: exact
    return std


def resolve_version_and_init(version: int | None, init: str | None) -> tuple[int, str]:
    """(version, init) with the defaults filled in, or ValueError naming what is unsupported.

    version None: the newest version that provides ``init`` (so init="gaussian" alone keeps
    meaning stream version 1); init None: the version's default init.
    """
    if init is not None and init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if version is None:
        if init is None:
            version = STREAM_VERSION
        else:
            version = max(v for v in SUPPORTED_STREAM_VERSIONS if init in VERSION_INITS[v])
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_STREAM_VERSIONS:
        raise ValueError(f"stream_version must be one of {SUPPORTED_STREAM_VERSIONS} or None, got {version!r}")
    if init is None:
        init = DEFAULT_INIT[version]
    if init not in VERSION_INITS[version]:
        raise ValueError(f"init {init!r} is not provided by stream version {version} "
                         f"(it provides {VERSION_INITS[version]})")
    return version, init


def split_u64(value: int) -> tuple[int, int]:
    """(low 32 bits, high 32 bits) of an unsigned 64-bit integer."""
    return value & 0xFFFFFFFF, value >> 32


def join_u64(low: int, high: int) -> int:
    """The unsigned 64-bit integer whose halves are ``low`` and ``high`` (each in [0, 2^32))."""
    return low | (high << 32)


def words(seed: int, stream: int) -> tuple[int, int, int, int]:
    """(seed_lo, seed_hi, stream_lo, stream_hi), each in [0, 2^32): the Philox key is
    (seed_lo, seed_hi) and the stream fills counter words 2 and 3 (docs/backbone.md). Every
    generator, kernel argument, custom-op schema and state-dict entry takes the words from here."""
    return (*split_u64(seed), *split_u64(stream))


@functools.lru_cache(maxsize=4096)
def int32_words(seed: int, stream: int) -> tuple[int, int, int, int]:
    """``words`` as the int32 values with the same bits: what kernels take as arguments (they
    bitcast them back to uint32; cached: a layer's launches ask for the same words every call)."""
    return tuple(w - (1 << 32) if w >= (1 << 31) else w for w in words(seed, stream))
