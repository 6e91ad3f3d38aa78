"""Candidate generators for a faster backbone stream (a future version 2), measured first.

No layer uses these. Each is defined exactly below, held bit-exact against a NumPy version in
``tests/test_candidates.py`` under the interpreter, and its per-value SASS cost counted for
sm_90 by ``python -m benchmarks.kernel_report``; benchmarks/NOTES.md compares them with stream v1.
Adopting one means a new STREAM_VERSION, golden values and docs/backbone.md, with v1 kept
loadable, and a GPU measurement to justify it.

Candidates (std = float32(1/sqrt(in_features)), key = seed, stream words as in v1):
- ``rademacher_bits``: one bit per value, 128 values per Philox call. Counter
  (i div 128, o, stream_lo, stream_hi); value = -std if bit (i mod 32) of word
  ((i mod 128) div 32) is 1, else +std.
- ``uniform16``: a 16-bit half-word per value, 8 values per call. Counter
  (i div 8, o, stream_lo, stream_hi); h = low half of word ((i mod 8) div 2) when i is even,
  high half when odd; value = float32(h - 2^15) * (std * 2^-15), uniform on [-std, std).
Both accept a round count (10 as in v1, or 7, which passes BigCrush per Random123).
"""

import triton
import triton.language as tl

from .backbone_tile import interleave4, philox_block

VARIANT_RADEMACHER_BITS = tl.constexpr(0)  # any other code is uniform16
VARIANTS = {"rademacher_bits": 0, "uniform16": 1}


@triton.jit
def _words(seed_lo, seed_hi, stream_lo, stream_hi, offs_row, group_start, N_GROUPS: tl.constexpr,
           N_ROUNDS: tl.constexpr):
    """The calls (group_start + g, row) as one [R, 4 * N_GROUPS] block, word j of group g at 4g + j."""
    w0, w1, w2, w3 = philox_block(seed_lo, seed_hi, stream_lo, stream_hi, offs_row, group_start,
                                  N_GROUPS, N_ROUNDS)
    return interleave4(w0, w1, w2, w3)


@triton.jit
def candidate_tile(seed_lo, seed_hi, stream_lo, stream_hi, offs_row, col_start, std,
                   BLOCK_COLS: tl.constexpr, VARIANT: tl.constexpr, N_ROUNDS: tl.constexpr):
    """W[offs_row, col_start + arange(BLOCK_COLS)] for a candidate; col_start and BLOCK_COLS
    are multiples of the variant's columns per call (128 or 8)."""
    R: tl.constexpr = offs_row.shape[0]
    if VARIANT == VARIANT_RADEMACHER_BITS:
        words = _words(seed_lo, seed_hi, stream_lo, stream_hi, offs_row, col_start // 128,
                       BLOCK_COLS // 128, N_ROUNDS)
        bits = (words[:, :, None] >> tl.arange(0, 32).to(tl.uint32)[None, None, :]) & 1
        values = tl.where(bits != 0, -std, std)
    else:
        words = _words(seed_lo, seed_hi, stream_lo, stream_hi, offs_row, col_start // 8,
                       BLOCK_COLS // 8, N_ROUNDS)
        halves = tl.join(words & 0xFFFF, words >> 16)
        values = (halves.to(tl.int32) - 32768).to(tl.float32) * (std * 3.0517578125e-05)  # 2^-15
    return tl.reshape(values, (R, BLOCK_COLS))


@triton.jit
def _candidate_gen_kernel(out_ptr, n_rows, n_cols, stride_out, seed_lo, seed_hi, stream_lo, stream_hi, std,
                          VARIANT: tl.constexpr, N_ROUNDS: tl.constexpr,
                          BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """out[r, c] = W[r, c] of the candidate for r < n_rows, c < n_cols."""
    offs_row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
    col_start = tl.program_id(1) * BLOCK_COLS
    tile = candidate_tile(seed_lo, seed_hi, stream_lo, stream_hi, offs_row, col_start, std,
                          BLOCK_COLS, VARIANT, N_ROUNDS)
    offs_col = col_start + tl.arange(0, BLOCK_COLS).to(tl.int64)
    mask = (offs_row < n_rows)[:, None] & (offs_col < n_cols)[None, :]
    tl.store(out_ptr + offs_row[:, None] * stride_out + offs_col[None, :], tile, mask=mask)


def generate_candidate(variant: str, seed: int, stream: int, in_features: int, out_features: int,
                       rounds: int, device, block_rows: int = 16, block_cols: int = 128):
    """The whole (out_features, in_features) weight of a candidate, float32."""
    import torch

    from . import stream_spec as spec
    from .runtime import backbone_scalars, new_output

    out = new_output((out_features, in_features), torch.float32, device)
    grid = (triton.cdiv(out_features, block_rows), triton.cdiv(in_features, block_cols))
    _candidate_gen_kernel[grid](out, out_features, in_features, out.stride(0), *backbone_scalars(seed, stream),
                                spec.backbone_std(in_features), VARIANT=VARIANTS[variant], N_ROUNDS=rounds,
                                BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, enable_fp_fusion=False)
    return out
