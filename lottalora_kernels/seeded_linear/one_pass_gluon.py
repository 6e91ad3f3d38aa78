"""The one-pass regime's Gluon kernel: W generated straight into tensor-core A-operand registers.

Same contract, grid, row mapping, spans, split order and epilogue as ``one_pass._one_pass_twin_kernel``
(the module docstring there states the math). One body, two instruction sets:

- ``HOPPER`` (sm_90): the W tile is the register A operand of asynchronous wgmma
  (``warpgroup_mma``, one warpgroup of 4 warps, accumulator NVMMADistributedLayout [3, 0]); x (or
  dy) is staged in shared memory (NVMMASharedLayout) by async copies, double-buffered: the next
  span's tile is in flight while this one is multiplied, and each column chunk of W is
  generated while the wgmma of the previous chunk runs.
- otherwise (sm_80 / sm_89 and later non-Hopper GPUs): the same body with mma.sync (``mma_v2``),
  x's operand read from the same shared-memory tiles.

Register budget (per thread, 4 warps): the float32 accumulator is 64 rows x BLOCK_M / 32 = 2 BLOCK_M
registers (a warp holds 64 output rows, WARP_ROWS); a chunk of W is 32 registers (64 weights),
two while a wgmma reads one; the two Philox calls a thread consumes per span are 8 words. So
BLOCK_M is 64 at most, 32 past 16 ranks (xa, BLOCK_M x the padded rank in float32, sits beside
the accumulator). Each span's two calls per thread are made once (``v2_call_at``) and consumed
in CHUNKS chunks (``v2_pick`` + ``v2_sign_pairs``): 32 columns of W (forward) or 16 rows of W^T
(input gradient, whose chunk sits in one word of each call: ``v2_pick_word``).

The LoRA factor xa = xl @ A^T rides in the forward's loop: lora_A's tile is staged beside x's,
and xa accumulates by wgmma with both operands in shared memory (BLOCK_M = 64) or by mma.sync.
The epilogue goes through shared memory where a second accumulator-sized tensor would spill:
split-K partials and their sum, and dbeta's <acc, x^T>, in slabs of 64 rows; the LoRA term
lmat @ lo^T accumulates onto the scaled backbone product in the MMA, 16 ranks per step.
Built to reach about 2 SASS per generated weight in the main loop; counted by
``python -m benchmarks.kernel_report`` (benchmarks/NOTES.md, "One-pass kernels").
"""

from __future__ import annotations

import triton.language as tl

from ..gluon import gl, gluon_jit
from ..launch import bind as bind_launch
from ..launch import launch
from ..runtime import capability_major
from ..stream.philox import PHILOX_ROUNDS
from ..stream.v2 import v2_call_at, v2_pick, v2_pick_word, v2_sign_pairs_pq, warp_span_rows

if gl is not None:
    from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    # Names that moved between Triton 3.6 (the GPU image) and 3.9: the CTA barrier
    # (thread_barrier -> barrier) and the masked async copy (async_copy_global_to_shared ->
    # async_load, same arguments).
    cta_barrier = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier
    async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
else:  # pragma: no cover
    async_copy = async_load = mma_v2 = fence_async_shared = warpgroup_mma = warpgroup_mma_wait = cta_barrier = None

# Output rows a warp holds: 64 rows of W (one v2 call span) or of W^T (half a span of i: the
# warps of a pair make the same calls and use 64 of their 128 bits each). 128 rows of W^T per
# warp would use every bit but double the accumulator (4 BLOCK_M registers a thread: it spills
# at BLOCK_M = 32 on sm_90), and each weight's cost is shared by BLOCK_M rows of dy. The twin
# (one_pass._one_pass_twin_kernel) maps its rows with the same constant.
WARP_ROWS = tl.constexpr(64)

# Column chunks of W (row chunks of W^T) per reduction span: 64 weights a thread each (32
# registers), generated while the previous chunk's wgmma runs. Eight chunks of 16 columns cut
# the forward's registers (254 -> 230 at BLOCK_M = 64, no LoRA) for 10% more SASS.
CHUNKS = 4



@gluon_jit()
def _stage(smem, base_ptr, offs_r, mask_r, stride_r, stride_c, q0, Q, span, t_next, n_here, offs_c,
           RED_SPAN: gl.constexpr, CHUNK: gl.constexpr, CHUNKS: gl.constexpr, ASYNC: gl.constexpr):
    """Rows offs_r (masked by mask_r) of a row-major operand (x, dy, the adapter's input or
    lora_A) at the reduction span ``span`` into the CHUNKS shared tiles of buffer t_next % 2;
    columns outside the block, and a span past the split's end (t_next >= n_here), read zeros.
    ASYNC: 16-byte async copies (rows 16-byte aligned at the span's columns: a block starting on
    a multiple of 16 columns); else loads through registers (an odd start shifts the operand
    against the spans)."""
    for j in gl.static_range(CHUNKS):
        cols = span * RED_SPAN + j * CHUNK + offs_c
        offs_q = cols - q0
        mask = mask_r & (cols >= q0) & (offs_q < Q) & (t_next < n_here)
        ptrs = base_ptr + offs_r.to(gl.int64) * stride_r + offs_q.to(gl.int64) * stride_c
        if ASYNC:
            async_load(smem.index((t_next % 2) * CHUNKS + j), ptrs, mask=mask)
        else:
            smem.index((t_next % 2) * CHUNKS + j).store(gl.load(ptrs, mask=mask, other=0.0))


@gluon_jit(do_not_specialize=["seed_lo", "seed_hi", "stream_lo", "stream_hi"])
def _one_pass_kernel(
    a_ptr, al_ptr, lf_ptr, lo_ptr, lmat_ptr, bias_ptr, beta_ptr, out_ptr, lo_out_ptr, x_ptr, dbeta_ptr,
    part_ptr, lo_part_ptr, count_ptr,
    M, P, Q, R, p0, q0,
    stride_am, stride_aq, stride_alm, stride_alq, stride_lfr, stride_lfq, stride_lom, stride_lor,
    stride_lmp, stride_lmr, stride_om, stride_op, stride_xm, stride_xp,
    seed_lo, seed_hi, stream_lo, stream_hi, spans_per_split, value_scale, lora_scale,
    DX: gl.constexpr, NUM_WARPS: gl.constexpr, BLOCK_M: gl.constexpr, R_PAD: gl.constexpr,
    MAKE_LO: gl.constexpr, HAS_LO: gl.constexpr, LORA_TERM: gl.constexpr, HAS_BIAS: gl.constexpr,
    WRITE_OUT: gl.constexpr, DBETA: gl.constexpr, SPLIT: gl.constexpr, DTYPE: gl.constexpr, HOPPER: gl.constexpr,
    SEPARATE_LX: gl.constexpr, X_ASYNC: gl.constexpr, CHUNKS: gl.constexpr, N_ROUNDS: gl.constexpr = PHILOX_ROUNDS,
):
    ROW_SPAN: gl.constexpr = 128 if DX else 64  # a call span along the output rows
    RED_SPAN: gl.constexpr = 64 if DX else 128
    CHUNK: gl.constexpr = RED_SPAN // CHUNKS
    BLOCK_P: gl.constexpr = WARP_ROWS * NUM_WARPS
    if HOPPER:
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                             instr_shape=[16, BLOCK_M, 16])
    else:
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NUM_WARPS, 1],
                                                             instr_shape=[16, 8])
    w_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    b_layout: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=acc_layout, k_width=2)
    # xa = xl @ A^T (BLOCK_M x R_PAD): rows of x on the MMA's rows, ranks on its columns; wgmma
    # with both operands in shared memory where BLOCK_M fills its 64 rows, else mma.sync.
    LO_WGMMA: gl.constexpr = HOPPER and BLOCK_M == 64
    if LO_WGMMA:
        lo_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                            instr_shape=[16, R_PAD, 16])
    else:
        lo_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NUM_WARPS, 1],
                                                            instr_shape=[16, 8])
    lo_a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=lo_layout, k_width=2)
    lo_b_layout: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=lo_layout, k_width=2)
    # Operand tiles as copied from memory: rows of CHUNK contiguous values, 16 bytes a copy.
    ld_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[32 * 8 // CHUNK, CHUNK // 8],
                                               warps_per_cta=[NUM_WARPS, 1], order=[1, 0])
    x_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, CHUNK], DTYPE)
    # Slabs of 64 output rows in the epilogue, p across lanes (where the partials are contiguous).
    red_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 1], threads_per_warp=[32, 1],
                                                warps_per_cta=[1, NUM_WARPS], order=[0, 1])
    # ... read from the tile in shared memory, rows fastest (conflict-free along p).
    slab_smem_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0, 1])

    pid_p = gl.program_id(0)
    pid_m = gl.program_id(1)
    pid_s = gl.program_id(2)
    n_splits = gl.num_programs(2)
    span_start = q0 // RED_SPAN + pid_s * spans_per_split
    span_end = gl.minimum(span_start + spans_per_split, gl.cdiv(q0 + Q, RED_SPAN))
    n_here = span_end - span_start
    row_first = (p0 // ROW_SPAN) * ROW_SPAN

    # The generated operand's coordinates. Tensor row 16 NUM_WARPS rep + 16 w + 8 h + g is
    # output row 64 (pid_p NUM_WARPS + w) + 8 (2 rep + h) + g past row_first (warp_span_rows),
    # split here into its span, block of 8 and residue straight from those bit fields (so the
    # compiler sees that a warp's rows share their calls): forward, o's (span_o, p, a); input
    # gradient, i's (span_i, q, c), two warps to a span of 128.
    rows_t = gl.arange(0, BLOCK_P, layout=gl.SliceLayout(1, w_layout))
    warp = pid_p * NUM_WARPS + (rows_t // 16) % NUM_WARPS
    blk = 2 * (rows_t // (16 * NUM_WARPS)) + (rows_t // 8) % 2
    if DX:
        row_span = gl.expand_dims(row_first // 128 + warp // 2, 1)
        row_blk = gl.expand_dims(8 * (warp % 2) + blk, 1)
    else:
        row_span = gl.expand_dims(row_first // 64 + warp, 1)
        row_blk = gl.expand_dims(blk, 1)
    row_res = gl.expand_dims(rows_t % 8, 1)
    cl = gl.expand_dims(gl.arange(0, CHUNK, layout=gl.SliceLayout(0, w_layout)), 0)
    col_res = cl % 8

    offs_c_ld = gl.expand_dims(gl.arange(0, CHUNK, layout=gl.SliceLayout(0, ld_layout)), 0)
    offs_m_ld = pid_m * BLOCK_M + gl.expand_dims(gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ld_layout)), 1)
    mask_m_ld = offs_m_ld < M
    x_smem = gl.allocate_shared_memory(DTYPE, [2 * CHUNKS, BLOCK_M, CHUNK], x_smem_layout)
    if MAKE_LO:
        offs_r_ld = gl.expand_dims(gl.arange(0, R_PAD, layout=gl.SliceLayout(1, ld_layout)), 1)
        mask_r_ld = offs_r_ld < R
        lf_smem = gl.allocate_shared_memory(DTYPE, [2 * CHUNKS, R_PAD, CHUNK],
                                            gl.NVMMASharedLayout.get_default_for([R_PAD, CHUNK], DTYPE))
        if SEPARATE_LX:
            xl_smem = gl.allocate_shared_memory(DTYPE, [2 * CHUNKS, BLOCK_M, CHUNK], x_smem_layout)
    lo_acc = gl.zeros((BLOCK_M, R_PAD), gl.float32, layout=lo_layout)
    acc = gl.zeros((BLOCK_P, BLOCK_M), gl.float32, layout=acc_layout)

    _stage(x_smem, a_ptr, offs_m_ld, mask_m_ld, stride_am, stride_aq, q0, Q, span_start, 0, n_here, offs_c_ld,
           RED_SPAN, CHUNK, CHUNKS, X_ASYNC)
    if MAKE_LO:
        _stage(lf_smem, lf_ptr, offs_r_ld, mask_r_ld, stride_lfr, stride_lfq, q0, Q, span_start, 0, n_here,
               offs_c_ld, RED_SPAN, CHUNK, CHUNKS, X_ASYNC)
        if SEPARATE_LX:
            _stage(xl_smem, al_ptr, offs_m_ld, mask_m_ld, stride_alm, stride_alq, q0, Q, span_start, 0, n_here,
                   offs_c_ld, RED_SPAN, CHUNK, CHUNKS, X_ASYNC)
    async_copy.commit_group()
    for t in range(0, n_here):
        span = span_start + t
        # This thread's two calls of the span (the generated operand's even and odd neighbours:
        # columns c & 6 and c | 1 of W forward, rows o mod 8 = a & 6 and a | 1 of W^T backward),
        # made while the previous span's last wgmma runs.
        if DX:
            wa0, wa1, wa2, wa3 = v2_call_at(seed_lo, seed_hi, stream_lo, stream_hi, span, col_res & 6, row_span,
                                            row_res, N_ROUNDS)
            wb0, wb1, wb2, wb3 = v2_call_at(seed_lo, seed_hi, stream_lo, stream_hi, span, col_res | 1, row_span,
                                            row_res, N_ROUNDS)
        else:
            wa0, wa1, wa2, wa3 = v2_call_at(seed_lo, seed_hi, stream_lo, stream_hi, row_span, row_res, span,
                                            col_res & 6, N_ROUNDS)
            wb0, wb1, wb2, wb3 = v2_call_at(seed_lo, seed_hi, stream_lo, stream_hi, row_span, row_res, span,
                                            col_res | 1, N_ROUNDS)
        if LO_WGMMA and MAKE_LO:
            acc, lo_acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc, lo_acc])
        elif HOPPER:
            acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
        cta_barrier()  # every warp is done with the buffer the next copies overwrite
        _stage(x_smem, a_ptr, offs_m_ld, mask_m_ld, stride_am, stride_aq, q0, Q, span + 1, t + 1, n_here,
               offs_c_ld, RED_SPAN, CHUNK, CHUNKS, X_ASYNC)
        if MAKE_LO:
            _stage(lf_smem, lf_ptr, offs_r_ld, mask_r_ld, stride_lfr, stride_lfq, q0, Q, span + 1, t + 1, n_here,
                   offs_c_ld, RED_SPAN, CHUNK, CHUNKS, X_ASYNC)
            if SEPARATE_LX:
                _stage(xl_smem, al_ptr, offs_m_ld, mask_m_ld, stride_alm, stride_alq, q0, Q, span + 1, t + 1,
                       n_here, offs_c_ld, RED_SPAN, CHUNK, CHUNKS, X_ASYNC)
        async_copy.commit_group()
        async_copy.wait_group(1)  # this span's tiles have landed (this thread's copies)
        cta_barrier()  # ... and every thread's
        if HOPPER:
            fence_async_shared()  # the async proxy (wgmma) reads what the copies wrote
        for j in gl.static_range(CHUNKS):
            # The pair's bit is (16 p + q) mod 32 of the picked words: p mod 2 is fixed per
            # register by the layout, so v2_sign_pairs_pq needs no select between half-words.
            if DX:
                # A row chunk of W^T is 16 rows of o: p = 2 j + (o mod 16) div 8, so every bit sits
                # in word j of its call (docs/backbone.md: bit 16 p + q).
                p_j = 2 * j + cl // 8
                word_a, _ = v2_pick_word(wa0, wa1, wa2, wa3, j, p_j, row_blk)
                word_b, _ = v2_pick_word(wb0, wb1, wb2, wb3, j, p_j, row_blk)
                w = v2_sign_pairs_pq(word_a, word_b, p_j, row_blk, DTYPE)
            else:
                q_j = (CHUNK // 8) * j + cl // 8
                word_a, _ = v2_pick(wa0, wa1, wa2, wa3, row_blk, q_j)
                word_b, _ = v2_pick(wb0, wb1, wb2, wb3, row_blk, q_j)
                w = v2_sign_pairs_pq(word_a, word_b, row_blk, q_j, DTYPE)
            x_tile = x_smem.index((t % 2) * CHUNKS + j)  # [BLOCK_M, CHUNK]
            if HOPPER:
                acc = warpgroup_mma(w, x_tile.permute((1, 0)), acc, is_async=True)
            else:
                acc = mma_v2(w, x_tile.permute((1, 0)).load(b_layout), acc)
            if MAKE_LO:
                xl_tile = x_tile
                if SEPARATE_LX:
                    xl_tile = xl_smem.index((t % 2) * CHUNKS + j)
                lf_t = lf_smem.index((t % 2) * CHUNKS + j).permute((1, 0))  # [CHUNK, R_PAD]
                if LO_WGMMA:
                    lo_acc = warpgroup_mma(xl_tile, lf_t, lo_acc, is_async=True)
                else:
                    lo_acc = mma_v2(xl_tile.load(lo_a_layout), lf_t.load(lo_b_layout), lo_acc)
            if HOPPER:
                # the previous chunk's MMAs are done (their W registers free); this chunk's run on
                if LO_WGMMA and MAKE_LO:
                    acc, lo_acc = warpgroup_mma_wait(num_outstanding=2, deps=[acc, lo_acc])
                else:
                    acc = warpgroup_mma_wait(num_outstanding=1, deps=[acc])
    if LO_WGMMA and MAKE_LO:
        acc, lo_acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc, lo_acc])
    elif HOPPER:
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
    async_copy.wait_group(0)

    rows_acc = gl.arange(0, BLOCK_P, layout=gl.SliceLayout(1, acc_layout))
    rows = row_first + pid_p * BLOCK_P + warp_span_rows(rows_acc, NUM_WARPS, WARP_ROWS).to(gl.int64)
    offs_p = gl.expand_dims(rows - p0, 1)
    mask_p = gl.expand_dims(rows >= p0, 1) & (offs_p < P)
    offs_m_lop = gl.expand_dims(gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, lo_layout)), 1)
    offs_r_lop = gl.expand_dims(gl.arange(0, R_PAD, layout=gl.SliceLayout(0, lo_layout)), 0)
    tile = pid_m * gl.num_programs(0) + pid_p
    is_last = True
    if SPLIT:
        # This split's partials, 64 rows at a time through shared memory, stored along p (where
        # they are contiguous); the last program sums all splits' the same way.
        red_smem = gl.allocate_shared_memory(gl.float32, [BLOCK_P, BLOCK_M], slab_smem_layout, acc)
        cta_barrier()
        m_red = pid_m * BLOCK_M + gl.expand_dims(gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, red_layout)), 0)
        for slab in gl.static_range(BLOCK_P // 64):
            t_red = slab * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, red_layout))
            r_red = row_first + pid_p * BLOCK_P + warp_span_rows(t_red, NUM_WARPS, WARP_ROWS).to(gl.int64)
            p_red = gl.expand_dims(r_red - p0, 1)
            mask_red = gl.expand_dims(r_red >= p0, 1) & (p_red < P) & (m_red < M)
            gl.store(part_ptr + (pid_s * M + m_red).to(gl.int64) * P + p_red,
                     red_smem.slice(slab * 64, 64, dim=0).load(red_layout), mask=mask_red)
        lo_part = lo_part_ptr + ((tile * n_splits + pid_s) * BLOCK_M + offs_m_lop) * R_PAD + offs_r_lop
        if MAKE_LO:
            gl.store(lo_part, lo_acc)
        cta_barrier()  # every thread's partials are issued before the ticket's release
        ticket = gl.atomic_add(count_ptr + tile, 1, sem="acq_rel")
        is_last = ticket == n_splits - 1
        if is_last:
            # The partials summed in split order, 64 rows at a time through shared memory (a
            # partial in the accumulator's layout would double the registers it holds).
            for slab in gl.static_range(BLOCK_P // 64):
                t_red = slab * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, red_layout))
                r_red = row_first + pid_p * BLOCK_P + warp_span_rows(t_red, NUM_WARPS, WARP_ROWS).to(gl.int64)
                p_red = gl.expand_dims(r_red - p0, 1)
                mask_red = gl.expand_dims(r_red >= p0, 1) & (p_red < P) & (m_red < M)
                total = gl.zeros((64, BLOCK_M), gl.float32, layout=red_layout)
                for s in range(0, n_splits):
                    total += gl.load(part_ptr + (s * M + m_red).to(gl.int64) * P + p_red, mask=mask_red, other=0.0,
                                     cache_modifier=".cg")
                red_smem.slice(slab * 64, 64, dim=0).store(total)
            cta_barrier()  # the tile's sum is in red_smem, read back below
            lo_acc = gl.zeros((BLOCK_M, R_PAD), gl.float32, layout=lo_layout)
            if MAKE_LO:
                for s in range(0, n_splits):
                    lo_acc += gl.load(lo_part + (s - pid_s) * BLOCK_M * R_PAD, cache_modifier=".cg")
            gl.atomic_xchg(count_ptr + tile, 0)  # ready for the next launch
    if is_last:
        if SPLIT:
            acc_smem = red_smem  # the splits' sum
            if WRITE_OUT:
                acc = acc_smem.load(acc_layout)
        elif DBETA:
            # A copy for dbeta, read in slabs once the output is staged: a slab loop while the
            # accumulator is live in registers would spill it.
            acc_smem = gl.allocate_shared_memory(gl.float32, [BLOCK_P, BLOCK_M], slab_smem_layout, acc)
        if WRITE_OUT:
            c = gl.load(beta_ptr).to(gl.float32) * value_scale
            if LORA_TERM:
                # The LoRA product accumulates onto the backbone's in the MMA (one accumulator, not
                # two: BLOCK_M = 64 has registers for one): out = (acc beta std / scale + lmat @
                # lo^T) * scale; the host leaves the term out when scale is 0.
                c = c / lora_scale
            out = acc * c
            if HAS_LO:
                m_lo = pid_m * BLOCK_M + offs_m_lop
                if MAKE_LO:
                    lo_t = lo_acc.to(DTYPE)  # xa in the output dtype, as the backward gets it
                    if pid_p == 0:
                        gl.store(lo_out_ptr + m_lo.to(gl.int64) * R + offs_r_lop, lo_t,
                                 mask=(offs_r_lop < R) & (m_lo < M))
                else:
                    lo_t = gl.load(lo_ptr + m_lo.to(gl.int64) * stride_lom + offs_r_lop * stride_lor,
                                   mask=(offs_r_lop < R) & (m_lo < M), other=0.0).to(DTYPE)
                if LORA_TERM:
                    # lmat @ lo^T in slabs of 16 ranks (K = 16 per MMA): one slab of lmat in
                    # registers at a time; lo goes through a plain tile into NVMMA slabs.
                    lo_plain = gl.allocate_shared_memory(DTYPE, [BLOCK_M, R_PAD],
                                                         gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0]), lo_t)
                    lo_slabs = gl.allocate_shared_memory(DTYPE, [R_PAD // 16, BLOCK_M, 16],
                                                         gl.NVMMASharedLayout.get_default_for([BLOCK_M, 16], DTYPE))
                    cta_barrier()
                    for rc in gl.static_range(R_PAD // 16):
                        lo_slabs.index(rc).store(lo_plain.slice(rc * 16, 16, dim=1).load(lo_layout))
                    cta_barrier()
                    if HOPPER:
                        fence_async_shared()
                    rows_w = gl.arange(0, BLOCK_P, layout=gl.SliceLayout(1, w_layout))
                    rows_g = row_first + pid_p * BLOCK_P + warp_span_rows(rows_w, NUM_WARPS, WARP_ROWS).to(gl.int64)
                    p_w = gl.expand_dims(rows_g - p0, 1)
                    mask_w = gl.expand_dims(rows_g >= p0, 1) & (p_w < P)
                    for rc in gl.static_range(R_PAD // 16):
                        r_w = rc * 16 + gl.expand_dims(gl.arange(0, 16, layout=gl.SliceLayout(0, w_layout)), 0)
                        lmat = gl.load(lmat_ptr + p_w * stride_lmp + r_w * stride_lmr, mask=mask_w & (r_w < R),
                                       other=0.0).to(DTYPE)
                        if HOPPER:
                            out = warpgroup_mma(lmat, lo_slabs.index(rc).permute((1, 0)), out)
                        else:
                            out = mma_v2(lmat, lo_slabs.index(rc).permute((1, 0)).load(b_layout), out)
                    out = out * lora_scale
            if HAS_BIAS:
                out = out + gl.load(bias_ptr + offs_p, mask=mask_p, other=0.0).to(gl.float32)
            # The cast tile goes out through shared memory, 64 rows at a time along p, where the
            # output's rows are contiguous (the accumulator's layout would store 16 bytes per row).
            out_smem = gl.allocate_shared_memory(out_ptr.dtype.element_ty, [BLOCK_P, BLOCK_M], slab_smem_layout,
                                                 out.to(out_ptr.dtype.element_ty))
        if DBETA or WRITE_OUT:
            # <acc, x^T> (x's tile read along p, where its rows are contiguous) and the output's
            # store, in slabs of 64 rows from shared memory.
            cta_barrier()
            m_sl = pid_m * BLOCK_M + gl.expand_dims(gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, red_layout)), 0)
            partial = gl.zeros((64, BLOCK_M), gl.float32, layout=red_layout)
            for slab in gl.static_range(BLOCK_P // 64):
                t_sl = slab * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, red_layout))
                r_sl = row_first + pid_p * BLOCK_P + warp_span_rows(t_sl, NUM_WARPS, WARP_ROWS).to(gl.int64)
                p_sl = gl.expand_dims(r_sl - p0, 1)
                mask_sl = gl.expand_dims(r_sl >= p0, 1) & (p_sl < P) & (m_sl < M)
                if DBETA:
                    xt = gl.load(x_ptr + m_sl.to(gl.int64) * stride_xm + p_sl * stride_xp, mask=mask_sl, other=0.0)
                    partial += acc_smem.slice(slab * 64, 64, dim=0).load(red_layout) * xt.to(gl.float32)
                if WRITE_OUT:
                    gl.store(out_ptr + m_sl.to(gl.int64) * stride_om + p_sl * stride_op,
                             out_smem.slice(slab * 64, 64, dim=0).load(red_layout), mask=mask_sl)
            if DBETA:
                gl.store(dbeta_ptr + tile, gl.sum(gl.sum(partial, axis=1), axis=0) * value_scale)


def launch_gluon(grid, args, flags, *, dtype, device, num_warps: int, x_async: bool, bind: bool = False):
    """Launch ``_one_pass_kernel`` with the twin's arguments and flags: wgmma on sm_90 (one
    warpgroup: num_warps must be 4), mma.sync elsewhere; ``x_async``: x (or dy) can be staged
    by 16-byte async copies (see _stage_tile). With ``bind``, returns the launch's
    ``lottalora_kernels.launch.BoundLaunch`` (or None where the launch was not direct)."""
    hopper = capability_major(device) == 9
    if hopper and num_warps != 4:
        raise ValueError(f"the sm_90 one-pass kernel runs one warpgroup (num_warps=4), got num_warps={num_warps}")
    return (bind_launch if bind else launch)(
        _one_pass_kernel, grid, *args, **flags, DTYPE=dtype, HOPPER=hopper,
        SEPARATE_LX=flags["MAKE_LO"] and args[1] is not args[0], X_ASYNC=x_async, CHUNKS=CHUNKS, num_warps=num_warps)
