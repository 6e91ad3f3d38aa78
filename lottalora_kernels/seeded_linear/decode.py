"""Decode regime (small M, stream v2): the backbone on the left of the dot, split over K.

    forward:        partial[s, m, o] = sum_{i in split s} W_signs[o, i] * x[m, i]      (kernel 1)
                    xa_partial[s, m, r] = sum_{i in split s} A[r, i] * x[m, i]          (kernel 1)
                    xa = sum_s xa_partial[s]  (rounded to x's dtype, also returned)      (kernel 2)
                    y[m, o] = beta * std * sum_s partial[s, m, o] + scale * (xa @ B^T)[m, o] + bias[o]
    input gradient: partial[s, m, i] = sum_{o in split s} W_signs[o, i] * dy[m, o]     (kernel 1)
                    dx[m, i] = beta * std * sum_s partial[s, m, i] + scale * (dy_b @ A)[m, i]
                    dbeta = std * <x, sum_s partial>                                    (kernel 2)

The forward is two launches: x @ A^T is made by extra programs of kernel 1 (A's rows loaded
where W's are generated, same MMAs) instead of a cuBLAS GEMV and its reduction before it.

At M <= 32 the layer is a matrix-vector product: the tensor cores idle and the cost is making
W. Generating W on the left of the product (out^T = W @ x^T) makes each thread's tile of W an
mma.sync A-operand fragment, which lives in registers: with stream v2's layout each thread
computes exactly the two Philox calls whose 256 bits it consumes per 128-column span, and turns
them into bf16/fp16 pairs with one shift and one LOP3 per register (stream_v2.v2_sign_pairs).
W never touches shared memory. Splitting K over programs puts several programs on every SM;
the partial sums are reduced in a fixed order by the epilogue kernel, so results are
deterministic (no atomics).

Row mapping: mma.sync gives warp w the tensor rows 16 w + 16 NW rep + [0, 16); the forward maps
them to weight rows o = 64 w + 16 rep + [0, 16), so that each warp holds 64 consecutive weight
rows, one v2 call span, in registers (the bit index then depends on registers only). The input
gradient multiplies W^T (rows i, a span of 128) by dy^T: each warp holds 128 rows of i and steps
over o in spans of 64, and each thread again computes exactly the two calls it consumes.

Two implementations of kernel 1, one contract:
- ``_seeded_decode_fwd_kernel`` (Gluon, GPU with sm_80+): explicit mma layouts and inline PTX;
  built to reach about 2 SASS instructions per weight in its main loop at M <= 8 (counted for
  sm_90 by ``python -m benchmarks.kernel_report``, results/kernel_report_sm90.md; the CI gate,
  tests/kernels/test_sm90_compile.py, is 4).
- ``_seeded_decode_fwd_twin_kernel`` (plain Triton): the same grid, row mapping, spans and
  partials with one weight per element (``v2_signs``); it runs under the interpreter, where CI
  holds it to the float64 reference. On a GPU, tests/kernels/test_gpu.py reads the Gluon kernel's own
  weights back bit for bit (one-hot inputs make every partial sum one weight) and holds its
  outputs to the twin's.
The input gradient has the same pair: ``_seeded_decode_dx_kernel`` (Gluon, same budget) and its
twin, read back the same way with one-hot dy. Past 32 rows the launcher runs 32 rows per launch
(a 64-wide accumulator spills), regenerating W each time; the dispatch leaves M > 32 to the
other regimes (measurements and counts: benchmarks/NOTES.md). Stream v1 is not served here.
With ``bind``, ``decode_fwd`` and ``decode_bwd_dx`` also return a replay of their two
launches (``DecodeForwardReplay``, ``DecodeInputGradReplay``: outputs and partial sums allocated
anew, the bound kernels launched), which the eager plans of ``lottalora.ops.eager`` run on a
layer's repeated calls.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..allocation import new_output
from ..dtypes import TL_DTYPES, dot_dtype, fp32_input_precision
from ..gluon import gl, gluon_available, gluon_jit, run_fast_path
from ..launch import bind as bind_launch
from ..launch import launch
from ..runtime import capability_major, cdiv, is_interpreting, launch_sm_count, narrowed
from ..stream import spec
from ..stream.philox import PHILOX_ROUNDS
from ..stream.v2 import v2_sign_pairs, v2_signs, v2_words_at, warp_span_rows
from .epilogue import dbeta_total, seeded_epilogue

SPAN_COLS = tl.constexpr(spec.V2_COL_SPAN)  # columns of W per main-loop step: one call span
ROW_SPAN = tl.constexpr(spec.V2_ROW_SPAN)  # rows of W (o) per input-gradient main-loop step
_XA_ROWS_PER_WARP = 16  # ranks of x @ A^T per warp in an extra program: one mma's rows
XA_ROWS_PER_WARP = tl.constexpr(_XA_ROWS_PER_WARP)
MAX_M = 32
MAX_SPLITS = 64  # the epilogue loads every split's x @ A^T partial of a row at once, and blocks of the others


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "stream_lo", "stream_hi"])
def _seeded_decode_fwd_twin_kernel(
    x_ptr, partial_ptr, xl_ptr, a_ptr, xa_partial_ptr, M, N, K, R, stride_xm, stride_xk, stride_xlm, stride_xlk,
    stride_ar, stride_ak, seed_lo, seed_hi, stream_lo, stream_hi, spans_per_split, n_w_blocks,
    NUM_WARPS: tl.constexpr, M_PAD: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    BLOCK_N: tl.constexpr = 64 * NUM_WARPS
    XA_ROWS: tl.constexpr = XA_ROWS_PER_WARP * NUM_WARPS
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = tl.arange(0, M_PAD)
    span_start = pid_s * spans_per_split
    span_end = tl.minimum((pid_s + 1) * spans_per_split, tl.cdiv(K, SPAN_COLS))
    if pid_n >= n_w_blocks:
        # xl @ A^T's partial sums over this split (xl: the adapter's input, x or e.g. dropout(x)),
        # XA_ROWS ranks: the backbone loop below with A's rows loaded where W's are generated.
        # A warp's 16 ranks at a time: one (XA_ROWS, M_PAD) product spilled when compiled for sm_90.
        a_cols = tl.arange(0, SPAN_COLS).to(tl.int64)
        for rank_block in tl.static_range(NUM_WARPS):
            offs_r = ((pid_n - n_w_blocks) * XA_ROWS + rank_block * XA_ROWS_PER_WARP
                      + tl.arange(0, XA_ROWS_PER_WARP)).to(tl.int64)  # * stride: int64
            xa = tl.zeros((XA_ROWS_PER_WARP, M_PAD), dtype=tl.float32)
            for span in range(span_start, span_end):
                a_k = span * SPAN_COLS + a_cols
                av = tl.load(a_ptr + offs_r[:, None] * stride_ar + a_k[None, :] * stride_ak,
                             mask=(offs_r < R)[:, None] & (a_k < K)[None, :], other=0.0)
                xv = tl.load(xl_ptr + offs_m[None, :] * stride_xlm + a_k[:, None] * stride_xlk,
                             mask=(offs_m < M)[None, :] & (a_k < K)[:, None], other=0.0)
                xa = tl.dot(av.to(DOT_DTYPE), xv.to(DOT_DTYPE), xa, input_precision=INPUT_PRECISION)
            xa_dst = xa_partial_ptr + (pid_s * M + offs_m[None, :]).to(tl.int64) * R + offs_r[:, None]
            tl.store(xa_dst, xa, mask=(offs_m < M)[None, :] & (offs_r < R)[:, None])
    else:
        rows_t = tl.arange(0, BLOCK_N)
        offs_o = pid_n * BLOCK_N + warp_span_rows(rows_t, NUM_WARPS).to(tl.int64)
        cols = tl.arange(0, SPAN_COLS).to(tl.int64)
        acc = tl.zeros((BLOCK_N, M_PAD), dtype=tl.float32)
        for span in range(span_start, span_end):
            offs_i = span * SPAN_COLS + cols
            w = v2_signs(seed_lo, seed_hi, stream_lo, stream_hi, offs_o[:, None], offs_i[None, :], DOT_DTYPE)
            xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + offs_i[:, None] * stride_xk,
                         mask=(offs_m < M)[None, :] & (offs_i < K)[:, None], other=0.0)
            acc = tl.dot(w, xt.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
        dst = partial_ptr + (pid_s * M + offs_m[None, :]).to(tl.int64) * N + offs_o[:, None]
        tl.store(dst, acc, mask=(offs_m < M)[None, :] & (offs_o < N)[:, None])


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "stream_lo", "stream_hi"])
def _seeded_decode_dx_twin_kernel(
    dy_ptr, partial_ptr, M, N, K, stride_dym, stride_dyn,
    seed_lo, seed_hi, stream_lo, stream_hi, spans_per_split,
    NUM_WARPS: tl.constexpr, M_PAD: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """partial[s, m, i] = sum over o in split s of W_signs[o, i] dy[m, o]: W^T on the left."""
    BLOCK_I: tl.constexpr = 128 * NUM_WARPS
    pid_i = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows_t = tl.arange(0, BLOCK_I)
    offs_i = pid_i * BLOCK_I + warp_span_rows(rows_t, NUM_WARPS, 128).to(tl.int64)
    offs_m = tl.arange(0, M_PAD)
    cols = tl.arange(0, ROW_SPAN).to(tl.int64)
    acc = tl.zeros((BLOCK_I, M_PAD), dtype=tl.float32)
    span_end = tl.minimum((pid_s + 1) * spans_per_split, tl.cdiv(N, ROW_SPAN))
    for span in range(pid_s * spans_per_split, span_end):
        offs_o = span * ROW_SPAN + cols
        wt = v2_signs(seed_lo, seed_hi, stream_lo, stream_hi, offs_o[None, :], offs_i[:, None], DOT_DTYPE)
        dyt = tl.load(dy_ptr + offs_m[None, :] * stride_dym + offs_o[:, None] * stride_dyn,
                      mask=(offs_m < M)[None, :] & (offs_o < N)[:, None], other=0.0)
        acc = tl.dot(wt, dyt.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
    dst = partial_ptr + (pid_s * M + offs_m[None, :]).to(tl.int64) * K + offs_i[:, None]
    tl.store(dst, acc, mask=(offs_m < M)[None, :] & (offs_i < K)[:, None])


@gluon_jit(do_not_specialize=["seed_lo", "seed_hi", "stream_lo", "stream_hi"])
def _seeded_decode_fwd_kernel(
    x_ptr, partial_ptr, xl_ptr, a_ptr, xa_partial_ptr, M, N, K, R, stride_xm, stride_xk, stride_xlm, stride_xlk,
    stride_ar, stride_ak, seed_lo, seed_hi, stream_lo, stream_hi, spans_per_split, n_w_blocks,
    NUM_WARPS: gl.constexpr, M_PAD: gl.constexpr, DTYPE: gl.constexpr, N_ROUNDS: gl.constexpr = PHILOX_ROUNDS,
):
    # Same contract, grid and row mapping as _seeded_decode_fwd_twin_kernel; W is generated in
    # the mma A-operand layout (two Philox calls per thread per span) and never leaves registers.
    BLOCK_N: gl.constexpr = 64 * NUM_WARPS
    XA_ROWS: gl.constexpr = XA_ROWS_PER_WARP * NUM_WARPS
    pid_n = gl.program_id(0)
    pid_s = gl.program_id(1)
    span_start = pid_s * spans_per_split
    span_end = gl.minimum((pid_s + 1) * spans_per_split, gl.cdiv(K, SPAN_COLS))
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NUM_WARPS, 1],
                                                  instr_shape=[16, 8])
    w_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    x_layout: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    # The operand offsets are made in each branch, not once above it: hoisted, they cost the
    # backbone loop registers (counted for sm_90).
    if pid_n >= n_w_blocks:
        offs_m_x = gl.expand_dims(gl.arange(0, M_PAD, layout=gl.SliceLayout(0, x_layout)), 0)
        offs_k_x = gl.expand_dims(gl.arange(0, SPAN_COLS, layout=gl.SliceLayout(1, x_layout)), 1)
        offs_m_acc = gl.expand_dims(gl.arange(0, M_PAD, layout=gl.SliceLayout(0, mma)), 0)
        # xl @ A^T over this split (xl: the adapter's input, x or e.g. dropout(x)), XA_ROWS ranks:
        # the backbone loop below with A's rows loaded where W's are generated (same operand
        # layouts, same MMAs).
        r0 = (pid_n - n_w_blocks) * XA_ROWS
        offs_r = (r0 + gl.expand_dims(gl.arange(0, XA_ROWS, layout=gl.SliceLayout(1, w_layout)), 1)).to(gl.int64)
        a_cols = gl.expand_dims(gl.arange(0, SPAN_COLS, layout=gl.SliceLayout(0, w_layout)), 0)
        xa = gl.zeros((XA_ROWS, M_PAD), gl.float32, layout=mma)
        for span in range(span_start, span_end):
            a_k = span * SPAN_COLS + a_cols
            av = gl.load(a_ptr + offs_r * stride_ar + a_k.to(gl.int64) * stride_ak, mask=(offs_r < R) & (a_k < K),
                         other=0.0)
            x_k = span * SPAN_COLS + offs_k_x
            xv = gl.load(xl_ptr + offs_m_x * stride_xlm + x_k.to(gl.int64) * stride_xlk,
                         mask=(offs_m_x < M) & (x_k < K), other=0.0)
            xa = gl.nvidia.ampere.mma_v2(av.to(DTYPE), xv.to(DTYPE), xa)
        offs_r_acc = r0 + gl.expand_dims(gl.arange(0, XA_ROWS, layout=gl.SliceLayout(1, mma)), 1)
        xa_dst = xa_partial_ptr + (pid_s * M + offs_m_acc).to(gl.int64) * R + offs_r_acc
        gl.store(xa_dst, xa, mask=(offs_m_acc < M) & (offs_r_acc < R))
    else:
        offs_m_x = gl.expand_dims(gl.arange(0, M_PAD, layout=gl.SliceLayout(0, x_layout)), 0)
        offs_k_x = gl.expand_dims(gl.arange(0, SPAN_COLS, layout=gl.SliceLayout(1, x_layout)), 1)
        offs_m_acc = gl.expand_dims(gl.arange(0, M_PAD, layout=gl.SliceLayout(0, mma)), 0)
        # Tensor row 16 NUM_WARPS rep + 16 w + 8 h + g is weight row 64 (pid_n NUM_WARPS + w) + 8 (2
        # rep + h) + g (warp_span_rows), split here into (span, p, a) straight from its bit fields.
        rows_t = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, w_layout))
        span_o = gl.expand_dims(pid_n * NUM_WARPS + (rows_t // 16) % NUM_WARPS, 1)
        p = gl.expand_dims(2 * (rows_t // (16 * NUM_WARPS)) + (rows_t // 8) % 2, 1)
        a = gl.expand_dims(rows_t % 8, 1)
        cols = gl.expand_dims(gl.arange(0, SPAN_COLS, layout=gl.SliceLayout(0, w_layout)), 0)
        q = cols // 8
        c = cols % 8
        acc = gl.zeros((BLOCK_N, M_PAD), gl.float32, layout=mma)
        for span in range(span_start, span_end):
            k0 = span * SPAN_COLS
            # The two columns of an operand register (c even, c + 1) come from two calls, same bit.
            word_a, bit = v2_words_at(seed_lo, seed_hi, stream_lo, stream_hi, span_o, p, a, span, q, c & 6,
                                      N_ROUNDS)
            word_b, _ = v2_words_at(seed_lo, seed_hi, stream_lo, stream_hi, span_o, p, a, span, q, c | 1,
                                    N_ROUNDS)
            w = v2_sign_pairs(word_a, word_b, bit, DTYPE)
            offs_k = k0 + offs_k_x
            xt = gl.load(x_ptr + offs_m_x * stride_xm + offs_k.to(gl.int64) * stride_xk,
                         mask=(offs_m_x < M) & (offs_k < K), other=0.0)
            acc = gl.nvidia.ampere.mma_v2(w, xt.to(DTYPE), acc)
        rows_acc = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma))
        offs_o_acc = gl.expand_dims(pid_n * BLOCK_N + warp_span_rows(rows_acc, NUM_WARPS), 1).to(gl.int64)
        dst = partial_ptr + (pid_s * M + offs_m_acc).to(gl.int64) * N + offs_o_acc
        gl.store(dst, acc, mask=(offs_m_acc < M) & (offs_o_acc < N))


@gluon_jit(do_not_specialize=["seed_lo", "seed_hi", "stream_lo", "stream_hi"])
def _seeded_decode_dx_kernel(
    dy_ptr, partial_ptr, M, N, K, stride_dym, stride_dyn,
    seed_lo, seed_hi, stream_lo, stream_hi, spans_per_split,
    NUM_WARPS: gl.constexpr, M_PAD: gl.constexpr, DTYPE: gl.constexpr, N_ROUNDS: gl.constexpr = PHILOX_ROUNDS,
):
    # Same contract, grid and row mapping as _seeded_decode_dx_twin_kernel. W^T's tile (128 rows
    # of i per warp, a 64-wide span of o) is generated in the mma A-operand layout; the two
    # values of an operand register are neighbouring o's, so the pair's calls differ in o mod 8.
    BLOCK_I: gl.constexpr = 128 * NUM_WARPS
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NUM_WARPS, 1],
                                                  instr_shape=[16, 8])
    w_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    dy_layout: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    pid_i = gl.program_id(0)
    pid_s = gl.program_id(1)
    # Tensor row 16 NUM_WARPS rep + 16 w + 8 h + g is row i = 128 (pid_i NUM_WARPS + w) + 8 (2 rep
    # + h) + g of W^T (warp_span_rows with SPAN = 128), split here into (span, q, c).
    rows_t = gl.arange(0, BLOCK_I, layout=gl.SliceLayout(1, w_layout))
    span_i = gl.expand_dims(pid_i * NUM_WARPS + (rows_t // 16) % NUM_WARPS, 1)
    q = gl.expand_dims(2 * (rows_t // (16 * NUM_WARPS)) + (rows_t // 8) % 2, 1)
    c = gl.expand_dims(rows_t % 8, 1)
    cols = gl.expand_dims(gl.arange(0, ROW_SPAN, layout=gl.SliceLayout(0, w_layout)), 0)
    p = cols // 8
    a = cols % 8
    offs_m_dy = gl.expand_dims(gl.arange(0, M_PAD, layout=gl.SliceLayout(0, dy_layout)), 0)
    offs_o_dy = gl.expand_dims(gl.arange(0, ROW_SPAN, layout=gl.SliceLayout(1, dy_layout)), 1)
    acc = gl.zeros((BLOCK_I, M_PAD), gl.float32, layout=mma)
    span_end = gl.minimum((pid_s + 1) * spans_per_split, gl.cdiv(N, ROW_SPAN))
    for span in range(pid_s * spans_per_split, span_end):
        word_a, bit = v2_words_at(seed_lo, seed_hi, stream_lo, stream_hi, span, p, a & 6, span_i, q, c, N_ROUNDS)
        word_b, _ = v2_words_at(seed_lo, seed_hi, stream_lo, stream_hi, span, p, a | 1, span_i, q, c, N_ROUNDS)
        wt = v2_sign_pairs(word_a, word_b, bit, DTYPE)
        offs_o = span * ROW_SPAN + offs_o_dy
        dyt = gl.load(dy_ptr + offs_m_dy * stride_dym + offs_o.to(gl.int64) * stride_dyn,
                      mask=(offs_m_dy < M) & (offs_o < N), other=0.0)
        acc = gl.nvidia.ampere.mma_v2(wt, dyt.to(DTYPE), acc)
    rows_acc = gl.arange(0, BLOCK_I, layout=gl.SliceLayout(1, mma))
    offs_i_acc = gl.expand_dims(pid_i * BLOCK_I + warp_span_rows(rows_acc, NUM_WARPS, 128), 1).to(gl.int64)
    offs_m_acc = gl.expand_dims(gl.arange(0, M_PAD, layout=gl.SliceLayout(0, mma)), 0)
    dst = partial_ptr + (pid_s * M + offs_m_acc).to(gl.int64) * K + offs_i_acc
    gl.store(dst, acc, mask=(offs_m_acc < M) & (offs_i_acc < K))


def _m_pad(m: int) -> int:
    """The accumulator's width (the mma's N): 8, 16 or 32 rows. Wider costs more MMAs and
    registers per weight (counted for sm_90: results/kernel_report_sm90.md); 64 spills."""
    return 8 if m <= 8 else 16 if m <= 16 else 32


def use_fast_path(x: torch.Tensor) -> bool:
    """The Gluon kernel needs a CUDA GPU with mma.sync (sm_80+), 16-bit inputs and Gluon."""
    return (x.is_cuda and not is_interpreting() and x.dtype in (torch.float16, torch.bfloat16)
            and capability_major(x.device) >= 8 and gluon_available())


def split_k_for(n_row_blocks: int, n_spans: int, device: torch.device) -> int:
    """Programs along K: enough for about four programs per SM, at least one span each, at most
    MAX_SPLITS."""
    sms = launch_sm_count(device)
    if sms is None:
        return min(n_spans, 2)  # the interpreter: exercise the split without slowing tests
    return max(1, min(n_spans, MAX_SPLITS, cdiv(4 * sms, n_row_blocks)))


def launch_splits(n_spans: int, split_k: int) -> tuple[int, int]:
    """(splits, spans per split) a launch asked for ``split_k`` splits runs: every split gets the
    same whole number of spans, so the count is rounded to leave none empty."""
    spans_per_split = cdiv(n_spans, split_k)
    return cdiv(n_spans, spans_per_split), spans_per_split


def _partial_products(
    a: torch.Tensor, *, transposed: bool, n_out: int, seed: int, stream: int, fast: bool | None,
    num_warps: int | None, split_k: int | None, lora_A: torch.Tensor | None = None, lora_x: torch.Tensor | None = None,
    bind: bool = False,
):
    """Kernel 1 of either direction: (splits, M, n_out) float32 partial sums of a @ W_signs^T
    (forward, a = x) or of a @ W_signs (input gradient, ``transposed``, a = dy); with
    ``lora_A`` (rank, K) (forward only), also (splits, M, rank) float32 partial sums of
    lora_x @ lora_A^T (lora_x: (M, K), a when None), made by extra programs beside the
    backbone's, else None. With ``bind``, a third result: the launch's ``launch.BoundLaunch``
    and its scalar arguments."""
    M, n_red = a.shape
    fast = use_fast_path(a) if fast is None else fast
    if num_warps is None:
        num_warps = 4 if a.is_cuda else 1
    # A warp holds one call span of the output's rows: 64 rows of W, or 128 of W^T.
    out_span, red_span = (spec.V2_COL_SPAN, spec.V2_ROW_SPAN) if transposed else (spec.V2_ROW_SPAN, spec.V2_COL_SPAN)
    n_row_blocks = cdiv(n_out, out_span * num_warps)
    n_spans = cdiv(n_red, red_span)
    split_k, spans_per_split = launch_splits(n_spans, split_k or split_k_for(n_row_blocks, n_spans, a.device))
    partial = new_output((split_k, M, n_out), torch.float32, a.device)
    N, K = (n_red, n_out) if transposed else (n_out, n_red)
    scalars = (*spec.int32_words(seed, stream), spans_per_split)
    if transposed:
        fast_kernel, twin_kernel = _seeded_decode_dx_kernel, _seeded_decode_dx_twin_kernel
        scalar_args = (M, N, K, a.stride(0), a.stride(1), *scalars)
        args, grid = (a, partial, *scalar_args), (n_row_blocks, split_k)
        xa_partial = None
    else:
        fast_kernel, twin_kernel = _seeded_decode_fwd_kernel, _seeded_decode_fwd_twin_kernel
        rank = lora_A.shape[0] if lora_A is not None else 0
        xa_partial = new_output((split_k, M, rank), torch.float32, a.device) if rank else None
        a_strides = tuple(lora_A.stride()) if rank else (0, 0)
        xl = lora_x if lora_x is not None else a
        scalar_args = (M, N, K, rank, a.stride(0), a.stride(1), xl.stride(0), xl.stride(1), *a_strides, *scalars,
                       n_row_blocks)
        args = (*_forward_tensors(a, partial, lora_x, lora_A, xa_partial), *scalar_args)
        grid = (n_row_blocks + cdiv(rank, _XA_ROWS_PER_WARP * num_warps), split_k)
    launch_fn = bind_launch if bind else launch

    def launch_fast():
        return launch_fn(fast_kernel, grid, *args, NUM_WARPS=num_warps, M_PAD=_m_pad(M), DTYPE=TL_DTYPES[a.dtype],
                         num_warps=num_warps)

    def launch_twin():
        return launch_fn(twin_kernel, grid, *args, NUM_WARPS=num_warps, M_PAD=max(16, _m_pad(M)),
                         DOT_DTYPE=dot_dtype(a.dtype), INPUT_PRECISION=fp32_input_precision(), num_warps=num_warps)
    if fast:
        bound = run_fast_path("seeded_decode_dx" if transposed else "seeded_decode", launch_fast, launch_twin)
    else:
        bound = launch_twin()
    if bind:
        return partial, xa_partial, (bound, scalar_args)
    return partial, xa_partial


def _forward_tensors(a, partial, lora_x, lora_A, xa_partial) -> tuple:
    """The forward kernel's tensor arguments: x, its partial sums, the adapter's input (x when
    None), A and xa's partial sums (x and the partial sums stand in without a rank)."""
    rank = xa_partial is not None
    return (a, partial, lora_x if lora_x is not None else a, lora_A if rank else a, xa_partial if rank else partial)


def _row_chunks(m: int):
    """Row ranges of at most MAX_M rows: a launch's accumulator holds 32 rows (64 spill)."""
    return [(r0, min(r0 + MAX_M, m)) for r0 in range(0, m, MAX_M)]


def decode_fwd(
    x: torch.Tensor, *, seed: int, stream: int, out_features: int, lora_A: torch.Tensor | None,
    lora_B: torch.Tensor | None, beta: torch.Tensor, bias: torch.Tensor | None, scale: float,
    fast: bool | None = None, num_warps: int | None = None, split_k: int | None = None,
    lora_x: torch.Tensor | None = None, bind: bool = False,
):
    """y = beta * std * x @ W_signs^T + scale * (lora_x @ lora_A^T) @ lora_B^T + bias for stream
    v2, in two launches per 32 rows: lora_x @ lora_A^T is made by the backbone kernel's extra
    programs. Past 32 rows W is regenerated for every 32.

    x and lora_x (the adapter's input, x when None): (M, K); lora_A: (rank, K) and lora_B:
    (out_features, rank), or None; beta: one element; bias: (out_features,) or None. Returns
    (y (M, out_features) in x.dtype, xa = lora_x @ lora_A^T (M, rank) in x.dtype as the LoRA
    term used it, or None); with ``bind`` also a ``DecodeForwardReplay`` of the call where it
    was one row chunk, else None. ``fast`` picks the Gluon kernel
    (default: when ``use_fast_path``), else the plain-Triton twin; ``num_warps`` and
    ``split_k`` pin the launch (tests). Inputs are assumed validated.
    """
    M, K = x.shape
    rank = lora_A.shape[0] if lora_A is not None else 0
    out = new_output((M, out_features), x.dtype, x.device)
    xa = new_output((M, rank), x.dtype, x.device) if lora_A is not None else None
    bound = []
    for r0, r1 in _row_chunks(M):
        partial, xa_partial, *products = _partial_products(
            narrowed(x, 0, r0, r1), transposed=False, n_out=out_features, seed=seed, stream=stream, fast=fast,
            num_warps=num_warps, split_k=split_k, lora_A=lora_A, lora_x=narrowed(lora_x, 0, r0, r1), bind=bind)
        epilogue = seeded_epilogue(
            partial, narrowed(out, 0, r0, r1), beta=beta, value_scale=spec.backbone_std(K), lo=xa_partial,
            lmat=lora_B, lora_scale=scale, bias=bias, lo_out=narrowed(xa, 0, r0, r1) if rank else None, bind=bind)
        if bind:
            bound.append((*products[0], epilogue[1], tuple(partial.shape)))
    if not bind:
        return out, xa
    if len(bound) != 1 or bound[0][2] is None:
        return out, xa, None
    return out, xa, DecodeForwardReplay(*bound[0], out.shape, xa.shape if xa is not None else None, rank)


class DecodeForwardReplay:
    """``decode_fwd``'s two launches again: ``replay(x, lora_A, lora_B, beta, bias, lora_x) ->
    (y, xa)`` on tensors with the first call's shapes, strides, dtypes, device and 16-byte
    alignment (lora_x given or not as there; ``lottalora.ops.eager`` keys its calls on that).
    Allocates the outputs and the partial sums and launches the compiled kernels directly."""

    __slots__ = ("products", "product_scalars", "epilogue", "partial_shape", "out_shape", "xa_shape", "rank")

    def __init__(self, products, product_scalars: tuple, epilogue, partial_shape, out_shape, xa_shape, rank: int):
        self.products, self.product_scalars, self.epilogue = products, product_scalars, epilogue
        self.partial_shape, self.out_shape, self.xa_shape, self.rank = partial_shape, out_shape, xa_shape, rank

    def __call__(self, x, lora_A, lora_B, beta, bias, lora_x):
        device = x.device
        out = new_output(self.out_shape, x.dtype, device)
        xa = new_output(self.xa_shape, x.dtype, device) if self.xa_shape is not None else None
        partial = new_output(self.partial_shape, torch.float32, device)
        xa_partial = (new_output((*self.partial_shape[:2], self.rank), torch.float32, device) if self.rank
                      else None)
        self.products(*_forward_tensors(x, partial, lora_x, lora_A, xa_partial), *self.product_scalars)
        self.epilogue(partial, out, xa_partial, lora_B, bias, beta, None, xa if self.rank else None)
        return out, xa


def decode_bwd_dx(
    dy: torch.Tensor, *, seed: int, stream: int, in_features: int, dy_b: torch.Tensor | None,
    lora_A: torch.Tensor | None, beta: torch.Tensor, scale: float, x_for_dbeta: torch.Tensor | None = None,
    need_dx: bool = True, fast: bool | None = None, num_warps: int | None = None, split_k: int | None = None,
    bind: bool = False,
):
    """dx = beta * std * dy @ W_signs + scale * dy_b @ lora_A and dbeta = std * <x, dy @ W_signs>
    for stream v2, in launches of 32 rows as ``decode_fwd``.

    dy: (M, N); dy_b: (M, rank) or None; lora_A: (rank, in_features) or None; x_for_dbeta: the
    forward's input (M, in_features) or None. Returns (dx (M, in_features) in dy.dtype or None
    when ``need_dx`` is False, dbeta as a float32 0-dim tensor or None); with ``bind`` also a
    ``DecodeInputGradReplay`` of the call where it was one row chunk, else None. ``fast``,
    ``num_warps`` and ``split_k`` as in ``decode_fwd``.
    """
    M = dy.shape[0]
    dx = new_output((M, in_features), dy.dtype, dy.device) if need_dx else None
    std = spec.backbone_std(in_features)
    dbeta_partials, bound = [], []
    for r0, r1 in _row_chunks(M):
        partial, _, *products = _partial_products(narrowed(dy, 0, r0, r1), transposed=True, n_out=in_features,
                                                  seed=seed, stream=stream, fast=fast, num_warps=num_warps,
                                                  split_k=split_k, bind=bind)
        epilogue = seeded_epilogue(
            partial, narrowed(dx, 0, r0, r1), beta=beta, value_scale=std, lo=narrowed(dy_b, 0, r0, r1),
            lmat=lora_A.T if lora_A is not None else None, lora_scale=scale,
            x_for_dbeta=narrowed(x_for_dbeta, 0, r0, r1), bind=bind)
        partial_dbeta = epilogue[0] if bind else epilogue
        if bind:
            bound.append((*products[0], epilogue[1], tuple(partial.shape)))
        if partial_dbeta is not None:
            dbeta_partials.append(partial_dbeta)
    dbeta = dbeta_total(dbeta_partials, dy.device) if x_for_dbeta is not None else None
    if not bind:
        return dx, dbeta
    if len(bound) != 1 or bound[0][2] is None:
        return dx, dbeta, None
    return dx, dbeta, DecodeInputGradReplay(*bound[0], dx.shape if dx is not None else None)


class DecodeInputGradReplay:
    """``decode_bwd_dx``'s launches again: ``replay(dy, dy_b, lora_A, beta, x_for_dbeta) -> (dx
    or None, dbeta or None)`` on tensors keyed as the first call's (dy_b and lora_A given where
    it fused the LoRA term, x_for_dbeta where it made dbeta; see ``DecodeForwardReplay``)."""

    __slots__ = ("products", "product_scalars", "epilogue", "partial_shape", "dx_shape")

    def __init__(self, products, product_scalars: tuple, epilogue, partial_shape, dx_shape):
        self.products, self.product_scalars, self.epilogue = products, product_scalars, epilogue
        self.partial_shape, self.dx_shape = partial_shape, dx_shape

    def __call__(self, dy, dy_b, lora_A, beta, x_for_dbeta):
        device = dy.device
        dx = new_output(self.dx_shape, dy.dtype, device) if self.dx_shape is not None else None
        partial = new_output(self.partial_shape, torch.float32, device)
        self.products(dy, partial, *self.product_scalars)
        partial_dbeta = self.epilogue(partial, dx, dy_b, lora_A.T if lora_A is not None else None, None, beta,
                                      x_for_dbeta, None)
        return dx, (dbeta_total([partial_dbeta], device) if x_for_dbeta is not None else None)
