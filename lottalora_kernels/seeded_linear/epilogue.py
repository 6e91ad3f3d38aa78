"""The epilogue shared by the decode and two-phase regimes: what follows the backbone product.

    out[m, n] = beta * value_scale * sum_s acc[s, m, n] + lora_scale * lo[m, :] . lmat[n, :] + bias[n]
    dbeta_partial[tile] = value_scale * sum_{(m, n) in tile} acc_sum[m, n] * x[m, n]   (optional)

``acc`` is the backbone product without its scale, in float32: split-K partial sums (decode) or
one cuBLAS product (two-phase). ``lo`` is x @ A^T (forward) or dy @ B (input gradient) in the
input dtype, or split-K float32 partial sums of it that the decode kernel made beside the
backbone product; then their rounded sum is also written out for the backward. Splits are summed
in a fixed order (a fixed tree within each block of splits), so the result does not depend on
scheduling. For the input gradient, lmat = A^T and the dbeta partials sum to
dbeta = value_scale * <x, dy @ W_signs>.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..allocation import new_output
from ..dtypes import round_to
from ..launch import bind as bind_launch
from ..launch import launch
from ..runtime import cdiv, launch_sm_count, next_power_of_2


@triton.jit
def _seeded_epilogue_kernel(
    acc_ptr, lo_ptr, lmat_ptr, bias_ptr, beta_ptr, out_ptr, x_ptr, dbeta_ptr, lo_out_ptr,
    M, N, R, n_splits, lo_splits,
    stride_as, stride_am, stride_an, stride_los, stride_lom, stride_lor, stride_lmn, stride_lmr,
    stride_om, stride_on, stride_xm, stride_xn,
    value_scale, lora_scale,
    HAS_LORA: tl.constexpr, HAS_BIAS: tl.constexpr, WRITE_OUT: tl.constexpr, DBETA: tl.constexpr,
    WRITE_LO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
    LO_SPLIT_BLOCK: tl.constexpr, R_UNROLL: tl.constexpr,
):
    # 2-D tiles: each LoRA factor row is read once per tile, not once per output row (a row per
    # program would re-read lmat M times). Loads are issued a block at a time (SPLIT_BLOCK
    # splits, R_UNROLL ranks) rather than one per loop trip: at decode sizes each trip is an L2
    # round trip, and a chain of them would be the kernel's whole time.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # int64: M * N may pass 2^31
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask_m = offs_m < M
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    offs_s = tl.arange(0, SPLIT_BLOCK).to(tl.int64)
    tile = offs_m[None, :, None] * stride_am + offs_n[None, None, :] * stride_an
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s0 in range(0, n_splits, SPLIT_BLOCK):
        splits = s0 + offs_s
        parts = tl.load(acc_ptr + splits[:, None, None] * stride_as + tile,
                        mask=(splits < n_splits)[:, None, None] & mask[None, :, :], other=0.0)
        acc += tl.sum(parts.to(tl.float32), axis=0)
    if DBETA:
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_n[None, :] * stride_xn, mask=mask,
                    other=0.0).to(tl.float32)
        tile_dbeta = tl.sum(tl.sum(acc * x, axis=1), axis=0) * value_scale
        tl.store(dbeta_ptr + pid_m * tl.num_programs(1) + pid_n, tile_dbeta)
    if WRITE_OUT:
        out = acc * (tl.load(beta_ptr).to(tl.float32) * value_scale)
        if HAS_LORA:
            # Outer products in float32, one rank at a time: exact products of the input-dtype
            # factors, and no bf16 tl.dot (wrong under the interpreter) for ranks that are small.
            # lo may come as split-K partial sums (decode: x @ A^T made beside the backbone
            # product); their sum is rounded to the output dtype, as a matmul in that dtype
            # would give it and as the backward receives it (WRITE_LO).
            offs_ls = tl.arange(0, LO_SPLIT_BLOCK).to(tl.int64)
            lo_tile = offs_ls[:, None] * stride_los + offs_m[None, :] * stride_lom
            lo_mask = (offs_ls < lo_splits)[:, None] & mask_m[None, :]
            lora = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for r0 in range(0, R, R_UNROLL):
                for j in tl.static_range(R_UNROLL):
                    # r as a one-element int64 tensor: offsets r * stride may pass 2^31, and the
                    # interpreter's masks must be tensors, never Python bools.
                    r = tl.full((1,), r0 + j, tl.int64)
                    r_ok = r < R
                    lo = tl.sum(tl.load(lo_ptr + lo_tile + r[:, None] * stride_lor, mask=lo_mask & r_ok[:, None],
                                        other=0.0).to(tl.float32), axis=0)
                    lo = round_to(lo, out_ptr.dtype.element_ty).to(tl.float32)
                    if WRITE_LO:
                        if pid_n == 0:
                            tl.store(lo_out_ptr + offs_m * R + r, lo.to(lo_out_ptr.dtype.element_ty),
                                     mask=mask_m & r_ok)
                    lmat = tl.load(lmat_ptr + offs_n * stride_lmn + r * stride_lmr, mask=mask_n & r_ok,
                                   other=0.0).to(tl.float32)
                    lora += lo[:, None] * lmat[None, :]
            out = out + lora * lora_scale
        if HAS_BIAS:
            out = out + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
                 round_to(out, out_ptr.dtype.element_ty), mask=mask)


# Elements of the split-partials block one program loads at once: 32 float32 registers a thread.
_SPLIT_TILE_ELEMENTS = 4096
R_UNROLL = 4


def tile_shape(M: int, N: int, sms: int | None, n_splits: int = 1) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for the epilogue: 32 x 128 on a GPU with ``sms`` multiprocessors,
    narrowed until there are two programs per SM and a tile of all ``n_splits`` partial sums
    fits one load block; 8 x 32 under the interpreter (sms None)."""
    if sms is None:
        return min(8, next_power_of_2(max(M, 1))), 32
    block_m, block_n = min(32, next_power_of_2(max(M, 1))), 128
    max_tile = max(32, _SPLIT_TILE_ELEMENTS // next_power_of_2(n_splits))

    def narrow() -> bool:
        return cdiv(M, block_m) * cdiv(N, block_n) < 2 * sms or block_m * block_n > max_tile
    # Decode-sized M gives few tiles: narrower ones keep every SM busy (benchmarks/NOTES.md).
    while narrow() and block_n > 32:
        block_n //= 2
    while narrow() and block_m > 1:
        block_m //= 2
    return block_m, block_n


def split_block(n_splits: int, tile_elements: int) -> int:
    return max(1, min(next_power_of_2(n_splits), _SPLIT_TILE_ELEMENTS // tile_elements))


def seeded_epilogue(
    acc: torch.Tensor, out: torch.Tensor | None, *, beta: torch.Tensor, value_scale: float,
    lo: torch.Tensor | None = None, lmat: torch.Tensor | None = None, lora_scale: float = 0.0,
    bias: torch.Tensor | None = None, x_for_dbeta: torch.Tensor | None = None, lo_out: torch.Tensor | None = None,
    bind: bool = False,
):
    """Apply the epilogue; returns the dbeta partial sums (row blocks, column blocks) float32, or
    None (their sum is value_scale * <x, acc>). With ``bind``: (those, an ``EpilogueReplay`` of
    this launch, or None where it launched nothing).

    acc: (splits, M, N) or (M, N), any strides; out: (M, N) or None (dbeta only); lo: (M, R),
    or (lo_splits, M, R) float32 partial sums of it, and lmat: (N, R), or None; bias: (N,) or
    None; x_for_dbeta: (M, N) or None; lo_out: None, or a contiguous (M, R) tensor that receives
    lo (its partial sums added, rounded to out's dtype): what the LoRA term used.
    """
    if acc.dim() == 2:
        acc = acc.unsqueeze(0)
    n_splits, M, N = acc.shape
    has_lora = lo is not None and lo.shape[-1] > 0
    if has_lora and lo.dim() == 2:
        lo = lo.unsqueeze(0)
    R = lo.shape[-1] if has_lora else 0
    lo_splits = lo.shape[0] if has_lora else 1
    if lo_out is not None and (out is None or not has_lora or tuple(lo_out.shape) != (M, R)
                               or not lo_out.is_contiguous()):
        raise ValueError("lo_out must be a contiguous (M, R) tensor, with out and a LoRA term")
    block_m, block_n = tile_shape(M, N, launch_sm_count(acc.device), max(n_splits, lo_splits))
    m_blocks, n_blocks = cdiv(M, block_m), cdiv(N, block_n)
    dbeta = new_output((m_blocks, n_blocks), torch.float32, acc.device) if x_for_dbeta is not None else None
    if M == 0 or N == 0:
        dbeta = dbeta.zero_() if dbeta is not None else None
        return (dbeta, None) if bind else dbeta
    def strides(t, n):
        return tuple(t.stride()) if t is not None else (0,) * n
    scalars = (M, N, R, n_splits, lo_splits, *acc.stride(), *strides(lo if has_lora else None, 3),
               *strides(lmat if has_lora else None, 2), *strides(out, 2), *strides(x_for_dbeta, 2), value_scale,
               lora_scale)
    bound = (bind_launch if bind else launch)(
        _seeded_epilogue_kernel, (m_blocks, n_blocks),
        *_tensor_args(acc, lo if has_lora else None, lmat if has_lora else None, bias, beta, out, x_for_dbeta, dbeta,
                      lo_out), *scalars,
        HAS_LORA=has_lora, HAS_BIAS=bias is not None, WRITE_OUT=out is not None, DBETA=dbeta is not None,
        WRITE_LO=lo_out is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        SPLIT_BLOCK=split_block(n_splits, block_m * block_n), LO_SPLIT_BLOCK=next_power_of_2(lo_splits),
        R_UNROLL=R_UNROLL,
    )
    if not bind:
        return dbeta
    return dbeta, EpilogueReplay(bound, scalars, (m_blocks, n_blocks) if x_for_dbeta is not None else None, has_lora)


class EpilogueReplay:
    """``seeded_epilogue``'s launch again on tensors laid out as the bound call's (the caller's
    key vouches for it: acc's and lo's shapes and strides, the same optional tensors given):
    ``replay(acc, out, lo, lmat, bias, beta, x_for_dbeta, lo_out) -> dbeta partials or None``;
    lo and lmat are read only where the bound call had a LoRA term (a rank-0 one is none).
    Absent tensors are replaced by acc, as ``seeded_epilogue`` does."""

    __slots__ = ("bound", "scalars", "dbeta_shape", "has_lora")

    def __init__(self, bound, scalars: tuple, dbeta_shape: tuple[int, int] | None, has_lora: bool):
        self.bound, self.scalars, self.dbeta_shape, self.has_lora = bound, scalars, dbeta_shape, has_lora

    def __call__(self, acc, out, lo, lmat, bias, beta, x_for_dbeta, lo_out):
        dbeta = new_output(self.dbeta_shape, torch.float32, acc.device) if self.dbeta_shape is not None else None
        if not self.has_lora:
            lo = lmat = None
        elif lo.dim() == 2:
            lo = lo.unsqueeze(0)
        self.bound(*_tensor_args(acc, lo, lmat, bias, beta, out, x_for_dbeta, dbeta, lo_out), *self.scalars)
        return dbeta


def _tensor_args(acc, lo, lmat, bias, beta, out, x_for_dbeta, dbeta, lo_out) -> tuple:
    """The epilogue kernel's tensor arguments, acc standing in for the absent ones (never read:
    their flags are off)."""
    return (acc, lo if lo is not None else acc, lmat if lmat is not None else acc, bias if bias is not None else acc,
            beta, out if out is not None else acc, x_for_dbeta if x_for_dbeta is not None else acc,
            dbeta if dbeta is not None else acc, lo_out if lo_out is not None else acc)


def dbeta_total(partials: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The sum of several ``seeded_epilogue`` calls' dbeta partials (they carry value_scale) as a
    float32 0-dim tensor, in one reduction (one launch, where a sum per call, a stack and a
    scale would be several). No partials (M = 0): zero."""
    if not partials:
        return torch.zeros((), device=device)
    flat = [p.view(-1) for p in partials]
    return (flat[0] if len(flat) == 1 else torch.cat(flat)).sum()
