"""Standalone generation of a block of W_seed (tests, benchmarks, ``backbone_weight()`` on GPU)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import stream_spec as spec
from .backbone_tile import backbone_tile
from .runtime import backbone_scalars, new_output


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "stream_lo", "stream_hi", "row_start", "col_start"])
def _backbone_gen_kernel(
    out_ptr, n_rows, n_cols, row_start, col_start, stride_out_r, stride_out_c,
    seed_lo, seed_hi, stream_lo, stream_hi, scale,
    INIT: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):
    """out[r, c] = W_seed[row_start + r, col_start + c] for r < n_rows, c < n_cols.

    Tiles are aligned to absolute column groups of 4 (the generator's unit), so a block that
    starts at any column is served by tiles starting at col_start rounded down to 4.
    """
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_row = row_start + pid_r * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
    tile_col0 = (col_start // 4) * 4 + pid_c * BLOCK_COLS
    tile = backbone_tile(seed_lo, seed_hi, stream_lo, stream_hi, offs_row, tile_col0, scale,
                         BLOCK_COLS, INIT)
    offs_col = tile_col0 + tl.arange(0, BLOCK_COLS).to(tl.int64)
    local_r = offs_row - row_start
    local_c = offs_col - col_start
    mask = ((local_r < n_rows)[:, None] & (local_c >= 0)[None, :] & (local_c < n_cols)[None, :])
    ptrs = out_ptr + local_r[:, None] * stride_out_r + local_c[None, :] * stride_out_c
    tl.store(ptrs, tile, mask=mask)


def generate_backbone(
    seed: int, stream: int, in_features: int, init: str,
    rows: tuple[int, int], cols: tuple[int, int], device: torch.device | str,
    block_rows: int = 32, block_cols: int = 64,
) -> torch.Tensor:
    """W_seed[rows[0]:rows[1], cols[0]:cols[1]] as a new float32 tensor on ``device``.

    Arguments are assumed validated (``lottalora.stream.BackboneSpec`` does that).
    """
    row0, row1 = rows
    col0, col1 = cols
    out = new_output((row1 - row0, col1 - col0), torch.float32, device)
    if out.numel() == 0:
        return out
    seed_lo, seed_hi, stream_lo, stream_hi = backbone_scalars(seed, stream)
    aligned_col0 = (col0 // 4) * 4
    grid = (triton.cdiv(row1 - row0, block_rows), triton.cdiv(col1 - aligned_col0, block_cols))
    _backbone_gen_kernel[grid](
        out, row1 - row0, col1 - col0, row0, col0, out.stride(0), out.stride(1),
        seed_lo, seed_hi, stream_lo, stream_hi, spec.value_scale(in_features, init),
        INIT=spec.INIT_CODES[init], BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols,
        enable_fp_fusion=False,
    )
    return out
