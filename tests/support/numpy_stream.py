"""docs/backbone.md re-implemented in NumPy from the page alone, as an independent check.

Deliberately written without importing lottalora's stream code: if the page and the library
disagree, a test fails. Only the frozen constants are read from ``stream_spec``.
"""

from __future__ import annotations

import math

import numpy as np

from lottalora_kernels.stream import spec

U32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(key, counter, rounds=10):
    k0, k1 = (np.uint64(k) for k in key)
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    for _ in range(rounds):
        prod_b = np.uint64(0xCD9E8D57) * c2  # < 2^64: exact in uint64
        prod_a = np.uint64(0xD2511F53) * c0
        c0, c1, c2, c3 = ((prod_b >> np.uint64(32)) ^ c1 ^ k0, prod_b & U32,
                          (prod_a >> np.uint64(32)) ^ c3 ^ k1, prod_a & U32)
        k0 = (k0 + np.uint64(0x9E3779B9)) & U32
        k1 = (k1 + np.uint64(0xBB67AE85)) & U32
    return c0, c1, c2, c3


def _horner(coeffs, x):
    acc = np.float32(coeffs[-1]) * np.ones_like(x)
    for c in coeffs[-2::-1]:
        acc = (acc * x).astype(np.float32) + np.float32(c)
    return acc.astype(np.float32)


def _box_muller(a, b, std):
    u = np.float32(2 * (a >> np.uint64(9)) + 1).astype(np.float32) * np.float32(2.0**-24)
    bits = u.astype(np.float32).view(np.int32)
    e = (bits >> 23) - 127
    t = ((bits & 0x7FFFFF) | 0x3F800000).view(np.float32) - np.float32(1.0)
    lnu = e.astype(np.float32) * np.float32(spec.LN2) + _horner(spec.LOG1P_COEFFS, t) * t
    r = np.sqrt(np.maximum(lnu * np.float32(-2.0), np.float32(0.0))) * np.float32(std)
    q = b >> np.uint64(30)
    f = ((b >> np.uint64(7)) & np.uint64(0x7FFFFF)).astype(np.float32) * np.float32(2.0**-23)
    f2 = f * f
    s = _horner(spec.SIN_COEFFS, f2) * f
    c = _horner(spec.COS_COEFFS, f2)
    cos = np.select([q == 0, q == 1, q == 2], [c, -s, -c], s)
    sin = np.select([q == 0, q == 1, q == 2], [s, c, -s], -c)
    return (r * cos).astype(np.float32), (r * sin).astype(np.float32)


def backbone(seed, stream, in_features, out_features, init):
    """The whole W_seed (out_features, in_features) as float32, per docs/backbone.md."""
    std = np.float32(1.0 / math.sqrt(in_features))
    groups = (in_features + 3) // 4
    g, o = np.meshgrid(np.arange(groups, dtype=np.uint64), np.arange(out_features, dtype=np.uint64))
    words = philox4x32_10((seed & 0xFFFFFFFF, seed >> 32),
                          (g, o, np.full_like(g, stream & 0xFFFFFFFF), np.full_like(g, stream >> 32)))
    if init == "uniform":
        scale = np.float32(std * np.float32(2.0**-23))
        vals = [((w >> np.uint64(8)).astype(np.int64) - 2**23).astype(np.float32) * scale for w in words]
    elif init == "rademacher":
        vals = [np.where((w >> np.uint64(31)) == 1, -std, std).astype(np.float32) for w in words]
    else:
        v0, v1 = _box_muller(words[0], words[1], std)
        v2, v3 = _box_muller(words[2], words[3], std)
        vals = [v0, v1, v2, v3]
    return np.stack(vals, axis=-1).reshape(out_features, groups * 4)[:, :in_features]


def backbone_v2_signs(seed, stream, in_features, out_features):
    """Stream version 2's signs (out_features, in_features) as float32 +-1, per docs/backbone.md."""
    o = np.arange(out_features, dtype=np.uint64)[:, None]
    i = np.arange(in_features, dtype=np.uint64)[None, :]
    a, p, big_o = o % 8, (o // 8) % 8, o // 64
    c, q, big_i = i % 8, (i // 8) % 16, i // 128
    c0 = 64 * big_i + 8 * a + c
    c1 = big_o + 0 * c0
    words = philox4x32_10((seed & 0xFFFFFFFF, seed >> 32),
                          (c0, c1, np.full_like(c0, stream & 0xFFFFFFFF), np.full_like(c0, stream >> 32)))
    n = 16 * p + q
    word = np.select([n // 32 == k for k in range(4)], list(words))
    bit = (word >> (n % 32)) & np.uint64(1)
    return np.where(bit == 1, np.float32(-1.0), np.float32(1.0)).astype(np.float32)


def backbone_v2(seed, stream, in_features, out_features):
    """Stream version 2's W_seed = sign * f32(1/sqrt(in_features)), float32."""
    std = np.float32(1.0 / math.sqrt(in_features))
    return (backbone_v2_signs(seed, stream, in_features, out_features) * std).astype(np.float32)
