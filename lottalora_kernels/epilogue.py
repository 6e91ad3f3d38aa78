"""The epilogue shared by the decode and two-phase regimes: what follows the backbone product.

    out[m, n] = beta * value_scale * sum_s acc[s, m, n] + lora_scale * lo[m, :] . lmat[n, :] + bias[n]
    dbeta_partial[m, block] = sum_{n in block} acc_sum[m, n] * x[m, n]       (optional)

``acc`` is the backbone product without its scale: split-K partial sums in float32 (decode) or
one cuBLAS product in the input dtype (two-phase). Splits are summed in a fixed order, so the
result does not depend on scheduling. For the input gradient, lo = dy @ B, lmat = A^T and the
dbeta partials give dbeta = value_scale * <x, dy @ W_signs>.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .runtime import new_output, round_to


@triton.jit
def _seeded_epilogue_kernel(
    acc_ptr, lo_ptr, lmat_ptr, bias_ptr, beta_ptr, out_ptr, x_ptr, dbeta_ptr,
    M, N, R, n_splits,
    stride_as, stride_am, stride_an, stride_lom, stride_lor, stride_lmn, stride_lmr,
    stride_om, stride_on, stride_xm, stride_xn,
    value_scale, lora_scale,
    HAS_LORA: tl.constexpr, HAS_BIAS: tl.constexpr, WRITE_OUT: tl.constexpr, DBETA: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for s in range(0, n_splits):
        acc += tl.load(acc_ptr + s * stride_as + m * stride_am + offs_n * stride_an, mask=mask_n,
                       other=0.0).to(tl.float32)
    if DBETA:
        x = tl.load(x_ptr + m * stride_xm + offs_n * stride_xn, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(dbeta_ptr + m * tl.num_programs(1) + pid_n, tl.sum(acc * x, axis=0))
    if WRITE_OUT:
        out = acc * (tl.load(beta_ptr).to(tl.float32) * value_scale)
        if HAS_LORA:
            lora = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for r_start in range(0, R, BLOCK_R):
                offs_r = r_start + tl.arange(0, BLOCK_R)
                mask_r = offs_r < R
                lo = tl.load(lo_ptr + m * stride_lom + offs_r * stride_lor, mask=mask_r, other=0.0).to(tl.float32)
                lmat = tl.load(lmat_ptr + offs_n[:, None] * stride_lmn + offs_r[None, :] * stride_lmr,
                               mask=mask_n[:, None] & mask_r[None, :], other=0.0).to(tl.float32)
                lora += tl.sum(lmat * lo[None, :], axis=1)
            out = out + lora * lora_scale
        if HAS_BIAS:
            out = out + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(out_ptr + m * stride_om + offs_n * stride_on, round_to(out, out_ptr.dtype.element_ty), mask=mask_n)


def seeded_epilogue(
    acc: torch.Tensor, out: torch.Tensor | None, *, beta: torch.Tensor, value_scale: float,
    lo: torch.Tensor | None = None, lmat: torch.Tensor | None = None, lora_scale: float = 0.0,
    bias: torch.Tensor | None = None, x_for_dbeta: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Apply the epilogue; returns the dbeta partial sums (M, blocks) float32, or None.

    acc: (splits, M, N) or (M, N), any strides; out: (M, N) or None (dbeta only); lo: (M, R)
    and lmat: (N, R), or None; bias: (N,) or None; x_for_dbeta: (M, N) or None.
    """
    if acc.dim() == 2:
        acc = acc.unsqueeze(0)
    n_splits, M, N = acc.shape
    has_lora = lo is not None and lo.shape[1] > 0
    R = lo.shape[1] if has_lora else 0
    block_n = 256 if acc.is_cuda else 32
    n_blocks = triton.cdiv(N, block_n)
    dbeta = new_output((M, n_blocks), torch.float32, acc.device) if x_for_dbeta is not None else None
    if M == 0 or N == 0:
        return dbeta.zero_() if dbeta is not None else None
    dummy = acc

    def strides(t, n):
        return tuple(t.stride()) if t is not None else (0,) * n
    _seeded_epilogue_kernel[(M, n_blocks)](
        acc, lo if has_lora else dummy, lmat if has_lora else dummy, bias if bias is not None else dummy, beta,
        out if out is not None else dummy, x_for_dbeta if x_for_dbeta is not None else dummy,
        dbeta if dbeta is not None else dummy, M, N, R, n_splits, *acc.stride(),
        *strides(lo if has_lora else None, 2), *strides(lmat if has_lora else None, 2),
        *strides(out, 2), *strides(x_for_dbeta, 2), value_scale, lora_scale,
        HAS_LORA=has_lora, HAS_BIAS=bias is not None, WRITE_OUT=out is not None, DBETA=dbeta is not None,
        BLOCK_N=block_n, BLOCK_R=max(16, min(64, triton.next_power_of_2(max(R, 1)))),
    )
    return dbeta
