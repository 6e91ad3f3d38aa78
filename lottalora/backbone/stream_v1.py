"""Stream version 1 in PyTorch: the twin of ``lottalora_kernels.stream.v1`` (docs/backbone.md).

One Philox4x32-10 call per 4 consecutive columns of a row; every float step is one float32 op
on float32 tensors, matching the kernel op for op, so the two are bit-equal.
"""

from __future__ import annotations

import torch

from lottalora_kernels.stream import spec

from .philox import philox4x32


def _f32(value: float, device: torch.device) -> torch.Tensor:
    # A fill, not torch.tensor: that would copy from the host on every call, which a CUDA graph
    # cannot capture. Both round the Python float to float32 the same way.
    return torch.full((), value, dtype=torch.float32, device=device)


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
    # torch.sqrt on float32 CPU tensors is not always correctly rounded (benchmarks/NOTES.md);
    # the float64 root rounded to float32 always is.
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


def block_values(seed: int, stream: int, init: str, scale: float, rows: tuple[int, int], cols: tuple[int, int],
          device: torch.device) -> torch.Tensor:
    """W_seed[rows, cols] of stream v1 as float32 (``scale`` from ``lottalora_kernels.stream.spec.value_scale``).

    Costs one Philox call per 4 columns of each row (the block is widened to whole groups of 4
    and trimmed). Callers bound the block's size (int64 temporaries are ~10x the block).
    """
    (row0, row1), (col0, col1) = rows, cols
    group0, group1 = col0 // 4, (col1 + 3) // 4
    row_idx = torch.arange(row0, row1, dtype=torch.int64, device=device)[:, None]
    group_idx = torch.arange(group0, group1, dtype=torch.int64, device=device)[None, :]
    shape = (row1 - row0, group1 - group0)
    seed_lo, seed_hi, stream_lo, stream_hi = spec.words(seed, stream)
    counter = (
        group_idx.expand(shape),
        row_idx.expand(shape),
        torch.full(shape, stream_lo, dtype=torch.int64, device=device),
        torch.full(shape, stream_hi, dtype=torch.int64, device=device),
    )
    words = philox4x32((seed_lo, seed_hi), counter)
    values = torch.stack(_values(words, init, scale), dim=-1)
    first = col0 - group0 * 4
    return values.reshape(shape[0], shape[1] * 4)[:, first: first + (col1 - col0)]
