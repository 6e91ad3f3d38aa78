"""Standalone generation of a block of W_seed into memory: ``backbone_weight()`` on GPU and the
first phase of the two-phase regime (a bounded chunk of W, then a GEMM).

One entry point, ``generate_backbone``, and three kernels:
- ``_backbone_gen_kernel``: stream v1, float32 values (bit-exact: no FMA contraction);
- ``_backbone_gen_v2_twin_kernel``: stream v2, plain Triton, one weight per element (the
  interpreter and CPU-run tests, and GPUs without Gluon);
- ``_backbone_gen_v2_kernel``: stream v2 in Gluon: a tile is generated in the mma A-operand
  layout exactly as the decode kernel does (two Philox calls per thread per 64 x 128 span,
  one shift and one LOP3 per pair of 16-bit values), then converted to a row-major layout with
  16-byte vectors for the store. The GPU tests hold it bit-equal to the twin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .allocation import new_output
from .dtypes import round_to
from .gluon import gl, gluon_available, gluon_jit, run_fast_path
from .launch import bind as bind_launch
from .launch import launch
from .runtime import capability_major, cdiv, is_interpreting
from .stream import spec
from .stream.v1 import backbone_tile
from .stream.v2 import v2_sign_pairs, v2_signs, v2_words_at, warp_span_rows

_ROW_SPAN, _COL_SPAN = spec.V2_ROW_SPAN, spec.V2_COL_SPAN
SPAN_COLS = tl.constexpr(_COL_SPAN)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "stream_lo", "stream_hi", "row_start", "col_start"])
def _backbone_gen_kernel(
    out_ptr, n_rows, n_cols, row_start, col_start, stride_out_r, stride_out_c,
    seed_lo, seed_hi, stream_lo, stream_hi, scale,
    INIT: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):
    """Stream v1: out[r, c] = W_seed[row_start + r, col_start + c] for r < n_rows, c < n_cols.

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
    tl.store(ptrs, round_to(tile, out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "stream_lo", "stream_hi"])
def _backbone_gen_v2_twin_kernel(
    out_ptr, n_rows, n_cols, row_start, col_start, stride_out_r, stride_out_c,
    seed_lo, seed_hi, stream_lo, stream_hi, scale,
    NUM_WARPS: tl.constexpr,
):
    """Stream v2: out[r, c] = scale * sign[row_start + r, col_start + c]; row_start and col_start
    are multiples of 64 and 128 (the launcher aligns and masks). Same tiles and row mapping as
    the Gluon kernel: 64 NUM_WARPS rows x 128 columns."""
    BLOCK_R: tl.constexpr = 64 * NUM_WARPS
    rows_t = tl.arange(0, BLOCK_R)
    local_r = (tl.program_id(0) * BLOCK_R + warp_span_rows(rows_t, NUM_WARPS)).to(tl.int64)
    local_c = tl.program_id(1) * SPAN_COLS + tl.arange(0, SPAN_COLS).to(tl.int64)
    signs = v2_signs(seed_lo, seed_hi, stream_lo, stream_hi, (row_start + local_r)[:, None],
                     (col_start + local_c)[None, :], tl.float32)
    mask = (local_r < n_rows)[:, None] & (local_c < n_cols)[None, :]
    ptrs = out_ptr + local_r[:, None] * stride_out_r + local_c[None, :] * stride_out_c
    tl.store(ptrs, (signs * scale).to(out_ptr.dtype.element_ty), mask=mask)


@gluon_jit(do_not_specialize=["seed_lo", "seed_hi", "stream_lo", "stream_hi"])
def _backbone_gen_v2_kernel(
    out_ptr, n_rows, n_cols, row_start, col_start, stride_out_r, stride_out_c,
    seed_lo, seed_hi, stream_lo, stream_hi, scale,
    NUM_WARPS: gl.constexpr, PAIR_DTYPE: gl.constexpr, SCALED: gl.constexpr,
):
    # Same contract and tiles as _backbone_gen_v2_twin_kernel. The span's 128 columns go out in
    # four 32-column parts so that a thread holds 64 values at a time, not 256; the two Philox
    # calls are the same expressions in every part, which the compiler computes once.
    BLOCK_R: gl.constexpr = 64 * NUM_WARPS
    PART: gl.constexpr = 32
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NUM_WARPS, 1],
                                                  instr_shape=[16, 8])
    w_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    store_layout: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [NUM_WARPS, 1], [1, 0])
    pid_r = gl.program_id(0)
    pid_c = gl.program_id(1)
    rows_t = gl.arange(0, BLOCK_R, layout=gl.SliceLayout(1, w_layout))
    span_o = gl.expand_dims(row_start // 64 + pid_r * NUM_WARPS + (rows_t // 16) % NUM_WARPS, 1)
    p = gl.expand_dims(2 * (rows_t // (16 * NUM_WARPS)) + (rows_t // 8) % 2, 1)
    a = gl.expand_dims(rows_t % 8, 1)
    part_cols = gl.expand_dims(gl.arange(0, PART, layout=gl.SliceLayout(0, w_layout)), 0)
    span_i = col_start // 128 + pid_c
    rows_s = gl.arange(0, BLOCK_R, layout=gl.SliceLayout(1, store_layout))
    local_r = gl.expand_dims(pid_r * BLOCK_R + warp_span_rows(rows_s, NUM_WARPS), 1).to(gl.int64)
    part_cols_s = gl.expand_dims(gl.arange(0, PART, layout=gl.SliceLayout(0, store_layout)), 0)
    for part in gl.static_range(SPAN_COLS // PART):
        cols = part * PART + part_cols
        word_a, bit = v2_words_at(seed_lo, seed_hi, stream_lo, stream_hi, span_o, p, a, span_i, cols // 8,
                                  (cols % 8) & 6)
        word_b, _ = v2_words_at(seed_lo, seed_hi, stream_lo, stream_hi, span_o, p, a, span_i, cols // 8,
                                (cols % 8) | 1)
        signs = v2_sign_pairs(word_a, word_b, bit, PAIR_DTYPE)
        if SCALED:
            values = (signs.to(gl.float32) * scale).to(out_ptr.dtype.element_ty)
        else:
            values = signs.to(out_ptr.dtype.element_ty)
        values = gl.convert_layout(values, store_layout)
        local_c = (pid_c * SPAN_COLS + part * PART + part_cols_s).to(gl.int64)
        gl.store(out_ptr + local_r * stride_out_r + local_c * stride_out_c, values,
                 mask=(local_r < n_rows) & (local_c < n_cols))


def use_gluon_generator(device: torch.device) -> bool:
    return (device.type == "cuda" and not is_interpreting() and gluon_available()
            and capability_major(device) >= 8)


def generate_backbone(
    seed: int, stream: int, in_features: int, init: str,
    rows: tuple[int, int], cols: tuple[int, int], device: torch.device | str,
    version: int = 1, dtype: torch.dtype = torch.float32, signs: bool = False,
    out: torch.Tensor | None = None, fast: bool | None = None, bind: bool = False,
):
    """W_seed[rows[0]:rows[1], cols[0]:cols[1]] (or, with ``signs``, stream v2's +-1 signs) as a
    ``dtype`` tensor on ``device``, written into ``out`` (rows x cols, any strides) when given.
    With ``bind``: (that tensor, a ``GeneratorReplay`` that makes the same launch into another
    ``out`` of the same strides, dtype and 16-byte alignment, or None where the call was not one
    launch).

    Stream v1 values are generated in float32 and rounded to ``dtype`` (as the fused kernels
    round their tiles); stream v2 signs are exact in every dtype and its W_seed is sign * std.
    ``fast`` picks the Gluon v2 kernel (default: on sm_80+ GPUs). Arguments are assumed
    validated (``lottalora.BackboneSpec`` does that).
    """
    device = torch.device(device)
    row0, row1 = rows
    col0, col1 = cols
    if out is None:
        out = new_output((row1 - row0, col1 - col0), dtype, device)
    if out.numel() == 0:
        return (out, None) if bind else out
    scalars = spec.int32_words(seed, stream)
    launch_fn = bind_launch if bind else launch
    if version == 1:
        block_rows, block_cols = 32, 64
        aligned_col0 = (col0 // 4) * 4
        grid = (cdiv(row1 - row0, block_rows), cdiv(col1 - aligned_col0, block_cols))
        tail = (row1 - row0, col1 - col0, row0, col0, out.stride(0), out.stride(1), *scalars,
                spec.value_scale(in_features, init, 1))
        bound = launch_fn(_backbone_gen_kernel, grid, out, *tail, INIT=spec.INIT_CODES[init], BLOCK_ROWS=block_rows,
                          BLOCK_COLS=block_cols, enable_fp_fusion=False)
        return (out, GeneratorReplay(bound, tail)) if bind else out
    # Stream v2: tiles start on span boundaries; the part before row0 / col0 is masked off by
    # pointing the kernel at a view that starts that many rows / columns earlier.
    scale = 1.0 if signs else spec.backbone_std(in_features)
    fast = use_gluon_generator(device) and out.dtype in (torch.float16, torch.bfloat16, torch.float32) \
        if fast is None else fast
    num_warps = 4 if device.type == "cuda" else 1
    span_row0, span_col0 = (row0 // _ROW_SPAN) * _ROW_SPAN, (col0 // _COL_SPAN) * _COL_SPAN
    lead_r, lead_c = row0 - span_row0, col0 - span_col0
    if lead_r or lead_c:
        staging = new_output((row1 - span_row0, col1 - span_col0), out.dtype, device)
        generate_backbone(seed, stream, in_features, init, (span_row0, row1), (span_col0, col1), device, version,
                          out.dtype, signs, staging, fast)
        out.copy_(staging[lead_r:, lead_c:])
        return (out, None) if bind else out
    grid = (cdiv(row1 - row0, _ROW_SPAN * num_warps), cdiv(col1 - col0, _COL_SPAN))
    tail = (row1 - row0, col1 - col0, row0, col0, out.stride(0), out.stride(1), *scalars, scale)

    def launch_fast():
        pair_dtype = gl.float16 if out.dtype == torch.float16 else gl.bfloat16  # +-1 exact in both
        return launch_fn(_backbone_gen_v2_kernel, grid, out, *tail, NUM_WARPS=num_warps, PAIR_DTYPE=pair_dtype,
                         SCALED=(not signs) or out.dtype == torch.float32, num_warps=num_warps)

    def launch_twin():
        return launch_fn(_backbone_gen_v2_twin_kernel, grid, out, *tail, NUM_WARPS=num_warps, num_warps=num_warps)
    if fast:
        bound = run_fast_path("backbone_gen_v2", launch_fast, launch_twin)
    else:
        bound = launch_twin()
    return (out, GeneratorReplay(bound, tail)) if bind else out


class GeneratorReplay:
    """``generate_backbone``'s launch again, into ``out`` laid out as the bound call's was (same
    strides, dtype and 16-byte alignment: the caller vouches for it): ``replay(out)``."""

    __slots__ = ("bound", "tail")

    def __init__(self, bound, tail: tuple):
        self.bound, self.tail = bound, tail

    def __call__(self, out: torch.Tensor) -> None:
        self.bound(out, *self.tail)
