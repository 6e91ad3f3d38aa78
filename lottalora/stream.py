"""The backbone stream in PyTorch: the reference for tests and the generator on the torch backend.

``backbone_block`` regenerates any block of ``W_seed`` on any device without Triton, bit-exact
with ``lottalora_kernels.backbone_tile`` (definition: ``docs/backbone.md``). 32-bit words live
in int64 tensors; products are split into 16-bit halves so nothing overflows int64. Every float
step is one float32 op on float32 tensors, matching the kernel op for op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lottalora_kernels import stream_spec as spec

_MASK32 = 0xFFFFFFFF
_CHUNK_VALUES = 1 << 20


def _check_u64(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in [0, 2**64 - 1], got {type(value).__name__} {value!r}")
    if not 0 <= value <= spec.UINT64_MAX:
        raise ValueError(f"{name} must be in [0, 2**64 - 1] (a 64-bit unsigned integer), got {value}")
    return value


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that determines a layer's frozen weight ``W_seed`` (out_features x in_features).

    seed: 64-bit unsigned user seed (the Philox key). stream: 64-bit unsigned id that tells the
    layers of one model apart. init: "gaussian", "uniform" or "rademacher".
    """

    seed: int
    stream: int
    in_features: int
    out_features: int
    init: str = "gaussian"

    def __post_init__(self) -> None:
        _check_u64("seed", self.seed)
        _check_u64("stream", self.stream)
        _check_positive_int("in_features", self.in_features)
        _check_positive_int("out_features", self.out_features)
        if self.init not in spec.INITS:
            raise ValueError(f"init must be one of {spec.INITS}, got {self.init!r}")
        if self.out_features > 2**32 or self.in_features > 2**34:
            raise ValueError(
                "the stream counts rows and column groups in 32 bits: out_features must be "
                f"<= 2**32 and in_features <= 2**34, got ({self.out_features}, {self.in_features})"
            )

    @property
    def value_scale(self) -> float:
        """The float32 factor applied to every value (see ``stream_spec.value_scale``)."""
        return spec.value_scale(self.in_features, self.init)


def _mulhilo(constant: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of constant * x for uint32 values held in int64."""
    c_lo, c_hi = constant & 0xFFFF, constant >> 16
    p_lo = x * c_lo  # < 2^48
    p_hi = x * c_hi  # < 2^48
    high = ((p_lo >> 16) + p_hi) >> 16
    low = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return high, low


def philox4x32(key: tuple[int, int], counter: tuple[torch.Tensor, ...], rounds: int = spec.PHILOX_ROUNDS):
    """Philox4x32 on uint32 values held in int64 tensors; returns four word tensors."""
    k0, k1 = key
    c0, c1, c2, c3 = counter
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo(spec.PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(spec.PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + spec.PHILOX_KEY_A) & _MASK32
        k1 = (k1 + spec.PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def _f32(value: float, device: torch.device) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=device)


def _horner(coeffs: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """sum coeffs[i] x^i, one float32 multiply then one float32 add per step, highest first."""
    acc = _f32(coeffs[-1], x.device).expand_as(x)
    for c in reversed(coeffs[:-1]):
        acc = acc * x + _f32(c, x.device)
    return acc


def _box_muller(word_radius: torch.Tensor, word_angle: torch.Tensor, std: float):
    device = word_radius.device
    odd = ((word_radius >> 9) * 2 + 1).to(torch.int32)
    u = odd.to(torch.float32) * _f32(spec.TWO_POW_M24, device)
    u_bits = u.view(torch.int32)
    exponent = (u_bits >> 23) - 127
    t = ((u_bits & 0x7FFFFF) | 0x3F800000).view(torch.float32) - _f32(1.0, device)
    ln_u = exponent.to(torch.float32) * _f32(spec.LN2, device) + _horner(spec.LOG1P_COEFFS, t) * t
    r2 = torch.clamp_min(ln_u * _f32(-2.0, device), 0.0)
    # torch.sqrt on float32 CPU tensors is not correctly rounded (about 17% of results are one
    # ulp off, seen with torch 2.13); the float64 root rounded to float32 always is.
    radius = torch.sqrt(r2.double()).float() * _f32(std, device)

    quadrant = word_angle >> 30
    f = ((word_angle >> 7) & 0x7FFFFF).to(torch.int32).to(torch.float32) * _f32(spec.TWO_POW_M23, device)
    f2 = f * f
    s = _horner(spec.SIN_COEFFS, f2) * f
    c = _horner(spec.COS_COEFFS, f2)
    cos_a = torch.where(quadrant == 0, c, torch.where(quadrant == 1, -s, torch.where(quadrant == 2, -c, s)))
    sin_a = torch.where(quadrant == 0, s, torch.where(quadrant == 1, c, torch.where(quadrant == 2, -s, -c)))
    return radius * cos_a, radius * sin_a


def _values(words: tuple[torch.Tensor, ...], init: str, scale: float) -> list[torch.Tensor]:
    if init == "gaussian":
        v0, v1 = _box_muller(words[0], words[1], scale)
        v2, v3 = _box_muller(words[2], words[3], scale)
        return [v0, v1, v2, v3]
    device = words[0].device
    if init == "uniform":
        return [((w >> 8) - 8388608).to(torch.float32) * _f32(scale, device) for w in words]
    return [torch.where((w >> 31) != 0, _f32(-scale, device), _f32(scale, device)) for w in words]


def backbone_block(
    spec_: BackboneSpec, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``W_seed[rows[0]:rows[1], cols[0]:cols[1]]`` as a new float32 tensor (default: all of it).

    Cost is one Philox call per 4 columns of each row in the block (the block is widened to
    whole groups of 4 and trimmed).
    """
    row0, row1 = rows if rows is not None else (0, spec_.out_features)
    col0, col1 = cols if cols is not None else (0, spec_.in_features)
    if not (0 <= row0 <= row1 <= spec_.out_features and 0 <= col0 <= col1 <= spec_.in_features):
        raise ValueError(
            f"block rows={row0, row1} cols={col0, col1} is outside the "
            f"{spec_.out_features} x {spec_.in_features} backbone"
        )
    device = torch.device(device) if device is not None else torch.device("cpu")
    group0, group1 = col0 // 4, (col1 + 3) // 4
    # The int64 temporaries are about ten times the block: big blocks go in row chunks of about
    # 2^20 values, which bounds memory and keeps the working set in cache (4x faster at 4096^2).
    chunk_rows = max(1, _CHUNK_VALUES // max(1, 4 * (group1 - group0)))
    if row1 - row0 > chunk_rows:
        out = torch.empty((row1 - row0, col1 - col0), dtype=torch.float32, device=device)
        for start in range(row0, row1, chunk_rows):
            stop = min(start + chunk_rows, row1)
            out[start - row0: stop - row0] = backbone_block(spec_, (start, stop), (col0, col1), device)
        return out
    row_idx = torch.arange(row0, row1, dtype=torch.int64, device=device)[:, None]
    group_idx = torch.arange(group0, group1, dtype=torch.int64, device=device)[None, :]
    shape = (row1 - row0, group1 - group0)
    seed_lo, seed_hi = spec.split_u64(spec_.seed)
    stream_lo, stream_hi = spec.split_u64(spec_.stream)
    counter = (
        group_idx.expand(shape),
        row_idx.expand(shape),
        torch.full(shape, stream_lo, dtype=torch.int64, device=device),
        torch.full(shape, stream_hi, dtype=torch.int64, device=device),
    )
    words = philox4x32((seed_lo, seed_hi), counter)
    values = torch.stack(_values(words, spec_.init, spec_.value_scale), dim=-1)
    first = col0 - group0 * 4
    return values.reshape(shape[0], shape[1] * 4)[:, first: first + (col1 - col0)].contiguous()
