"""Stream version 1 in Triton: the one v1 tile generator, shared by every kernel.

``backbone_tile`` returns ``W_seed[rows, col_start : col_start + BLOCK_COLS]`` in float32 for
any block of rows and any column start that is a multiple of 4. A value depends only on
(seed, stream, row, column, init, in_features), never on the program id or the tile shape, so
the forward, the backward and every autotune config regenerate the same bits. The definition is
``docs/backbone.md``; ``lottalora.backbone.stream_v1`` is the PyTorch twin and tests hold the two bit-equal.

Bit-exactness rests on every float step being a single IEEE operation (multiply, add, exact
int->float conversion, correctly rounded sqrt): kernels that call this must be launched with
``enable_fp_fusion=False`` so that no multiply-add is contracted into an FMA.
"""

import triton
import triton.language as tl

from . import spec
from .philox import PHILOX_ROUNDS as _ROUNDS
from .philox import philox4x32

_LN2 = tl.constexpr(spec.LN2)
_L0, _L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8 = (tl.constexpr(c) for c in spec.LOG1P_COEFFS)
_S0, _S1, _S2, _S3, _S4 = (tl.constexpr(c) for c in spec.SIN_COEFFS)
_C0, _C1, _C2, _C3, _C4, _C5 = (tl.constexpr(c) for c in spec.COS_COEFFS)
_TWO_POW_M23 = tl.constexpr(spec.TWO_POW_M23)
_TWO_POW_M24 = tl.constexpr(spec.TWO_POW_M24)
INIT_GAUSSIAN = tl.constexpr(spec.INIT_CODES["gaussian"])
INIT_UNIFORM = tl.constexpr(spec.INIT_CODES["uniform"])  # any other code is rademacher


@triton.jit
def philox_block(seed_lo, seed_hi, stream_lo, stream_hi, offs_row, group_start, N_GROUPS: tl.constexpr,
                 N_ROUNDS: tl.constexpr):
    """The four words of the calls with counter (group_start + g, row, stream_lo, stream_hi) and
    key (seed_lo, seed_hi), for g < N_GROUPS and each row of offs_row: four [R, N_GROUPS] uint32
    blocks. Stream v1's counter layout (docs/backbone.md)."""
    rows = offs_row.to(tl.uint32)[:, None]
    groups = (group_start + tl.arange(0, N_GROUPS)).to(tl.uint32)[None, :]
    c0, c1 = tl.broadcast(groups, rows)
    c2 = tl.zeros_like(c0) + tl.cast(stream_lo, tl.uint32, bitcast=True)
    c3 = tl.zeros_like(c0) + tl.cast(stream_hi, tl.uint32, bitcast=True)
    return philox4x32(tl.cast(seed_lo, tl.uint32, bitcast=True), tl.cast(seed_hi, tl.uint32, bitcast=True),
                      c0, c1, c2, c3, N_ROUNDS)


@triton.jit
def _box_muller(word_radius, word_angle, std):
    """Two N(0, std^2) values from two uint32 words, with fixed polynomials for log, sin, cos."""
    # u = odd / 2^24 in (0, 1): exact in float32, never 0, so ln(u) is finite.
    odd = ((word_radius >> 9) * 2 + 1).to(tl.int32)
    u = odd.to(tl.float32) * _TWO_POW_M24
    u_bits = u.to(tl.int32, bitcast=True)
    exponent = (u_bits >> 23) - 127
    t = ((u_bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True) - 1.0
    p = _L8 * t + _L7
    p = p * t + _L6
    p = p * t + _L5
    p = p * t + _L4
    p = p * t + _L3
    p = p * t + _L2
    p = p * t + _L1
    p = p * t + _L0
    ln_u = exponent.to(tl.float32) * _LN2 + p * t
    radius = tl.sqrt_rn(tl.maximum(ln_u * -2.0, 0.0)) * std

    quadrant = word_angle >> 30
    f = ((word_angle >> 7) & 0x7FFFFF).to(tl.int32).to(tl.float32) * _TWO_POW_M23
    f2 = f * f
    s = _S4 * f2 + _S3
    s = s * f2 + _S2
    s = s * f2 + _S1
    s = s * f2 + _S0
    s = s * f
    c = _C5 * f2 + _C4
    c = c * f2 + _C3
    c = c * f2 + _C2
    c = c * f2 + _C1
    c = c * f2 + _C0
    # angle = (quadrant + f) * pi/2: rotate (cos, sin) by whole quarter turns, exactly.
    cos_a = tl.where(quadrant == 0, c, tl.where(quadrant == 1, -s, tl.where(quadrant == 2, -c, s)))
    sin_a = tl.where(quadrant == 0, s, tl.where(quadrant == 1, c, tl.where(quadrant == 2, -s, -c)))
    return radius * cos_a, radius * sin_a


@triton.jit
def _uniform(word, scale):
    """A centred 24-bit integer in [-2^23, 2^23) times bound * 2^-23: uniform in [-bound, bound)."""
    return ((word >> 8).to(tl.int32) - 8388608).to(tl.float32) * scale


@triton.jit
def _rademacher(word, bound):
    """+bound or -bound from the top bit."""
    return tl.where((word >> 31) != 0, -bound, bound)


@triton.jit
def backbone_tile(seed_lo, seed_hi, stream_lo, stream_hi, offs_row, col_start, scale,
                  BLOCK_COLS: tl.constexpr, INIT: tl.constexpr):
    """W_seed[offs_row, col_start + arange(BLOCK_COLS)] as float32, shape [len(offs_row), BLOCK_COLS].

    seed_*/stream_*: int32 halves of the 64-bit seed and stream (bit patterns, reinterpreted as
    uint32 here). offs_row: int tensor of row indices. col_start: a multiple of 4. scale: the
    float32 from ``stream_spec.value_scale``. Rows and columns past the layer's edges produce
    finite values: callers mask loads or stores, never the tile.
    """
    w0, w1, w2, w3 = philox_block(seed_lo, seed_hi, stream_lo, stream_hi, offs_row, col_start // 4,
                                  BLOCK_COLS // 4, _ROUNDS)
    if INIT == INIT_GAUSSIAN:
        v0, v1 = _box_muller(w0, w1, scale)
        v2, v3 = _box_muller(w2, w3, scale)
    elif INIT == INIT_UNIFORM:
        v0 = _uniform(w0, scale)
        v1 = _uniform(w1, scale)
        v2 = _uniform(w2, scale)
        v3 = _uniform(w3, scale)
    else:
        v0 = _rademacher(w0, scale)
        v1 = _rademacher(w1, scale)
        v2 = _rademacher(w2, scale)
        v3 = _rademacher(w3, scale)
    # Word j of group g is column 4g + j.
    return interleave4(v0, v1, v2, v3)


@triton.jit
def interleave4(v0, v1, v2, v3):
    """Four [R, C] blocks -> [R, 4C] with element 4c + j taken from block j."""
    tile = tl.join(tl.join(v0, v2), tl.join(v1, v3))
    return tl.reshape(tile, (v0.shape[0], 4 * v0.shape[1]))
