"""The one-pass fused seeded matmul (stream v1): one kernel body for the forward and for the
input gradient.

    out[M, P] = beta * (a[M, Q] @ Wop[Q, P]) + lora_scale * (lo[M, R] @ lmat[R, P]) + bias[P]

Forward (``W_TRANSPOSED``): a = x, Q = in_features, P = out_features, Wop = W_seed^T,
lo = x @ A^T, lmat = B^T. Input gradient: a = dy, Q = out_features, P = in_features,
Wop = W_seed, lo = dy @ B, lmat = A, no bias. The two share this body so that the traversal of
the backbone cannot drift between them; only which tile axis is a row of W_seed changes.

Tiling: each program owns a BLOCK_M x BLOCK_P block of ``out`` (grouped along M for L2 reuse of
``a``) and walks Q in BLOCK_Q steps; at each step it regenerates the BLOCK_Q x BLOCK_P tile of
Wop in registers with ``backbone_tile`` and feeds it to ``tl.dot``. W_seed is never written to
memory. The rank-R product and the bias are applied in the epilogue. With ``DBETA`` the program
also writes sum(acc * x_tile), its share of dbeta = <x, dy @ W_seed>, to one slot per program.

Not done here: the M x R product ``lo`` (a small matmul left to cuBLAS), split-K for tiny M.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..allocation import new_output
from ..dtypes import dot_dtype, fp32_input_precision, round_to
from ..launch import launch
from ..runtime import cdiv, is_interpreting, next_power_of_2
from ..stream import spec
from ..stream.v1 import backbone_tile


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "stream_lo", "stream_hi"])
def _one_pass_v1_kernel(
    a_ptr, lo_ptr, lmat_ptr, bias_ptr, beta_ptr, out_ptr, x_ptr, dbeta_ptr,
    M, P, Q, R,
    stride_am, stride_aq, stride_lom, stride_lor, stride_lmr, stride_lmp,
    stride_om, stride_op, stride_xm, stride_xp,
    seed_lo, seed_hi, stream_lo, stream_hi, value_scale, lora_scale,
    M_BUCKET,  # only an autotune key: configs are tuned per power-of-two bucket of M
    W_TRANSPOSED: tl.constexpr, INIT: tl.constexpr, HAS_LORA: tl.constexpr,
    HAS_BIAS: tl.constexpr, WRITE_OUT: tl.constexpr, DBETA: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_p = tl.cdiv(P, BLOCK_P)
    num_pid_in_group = GROUP_M * num_pid_p
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_p = (pid % num_pid_in_group) // group_size_m

    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_p = (pid_p * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    mask_m = offs_m < M
    mask_p = offs_p < P

    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    for q_start in range(0, Q, BLOCK_Q):
        offs_q = q_start + tl.arange(0, BLOCK_Q).to(tl.int64)
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_q[None, :] * stride_aq,
                    mask=mask_m[:, None] & (offs_q < Q)[None, :], other=0.0)
        if W_TRANSPOSED:
            w = tl.trans(backbone_tile(seed_lo, seed_hi, stream_lo, stream_hi, offs_p, q_start,
                                       value_scale, BLOCK_Q, INIT))
        else:
            w = backbone_tile(seed_lo, seed_hi, stream_lo, stream_hi, offs_q, pid_p * BLOCK_P,
                              value_scale, BLOCK_P, INIT)
        # Rows/columns of w past the layer's edges are finite and meet zeros of ``a`` or a
        # masked store, so the tile itself needs no mask.
        w = round_to(w, a.dtype).to(DOT_DTYPE)
        if DOT_DTYPE == tl.float32:
            acc = tl.dot(a.to(DOT_DTYPE), w, acc, input_precision=INPUT_PRECISION)
        else:
            acc = tl.dot(a.to(DOT_DTYPE), w, acc)

    if DBETA:
        # One cell per 16 x 16 block of ``out``, whatever the config: the program's partial goes
        # in its first cell and zeros in the rest, so every cell is written on every run and no
        # stale value can survive from an autotuning run.
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_p[None, :] * stride_xp,
                    mask=mask_m[:, None] & mask_p[None, :], other=0.0)
        partial = tl.sum(tl.sum(acc * x.to(tl.float32), axis=1), axis=0)
        local_m = tl.arange(0, BLOCK_M // 16)
        local_p = tl.arange(0, BLOCK_P // 16)
        cells_m = pid_m * (BLOCK_M // 16) + local_m
        cells_p = pid_p * (BLOCK_P // 16) + local_p
        n_cells_m = tl.cdiv(M, 16)
        n_cells_p = tl.cdiv(P, 16)
        first = (local_m[:, None] == 0) & (local_p[None, :] == 0)
        cells = tl.where(first, partial, 0.0)
        tl.store(dbeta_ptr + cells_m[:, None] * n_cells_p + cells_p[None, :], cells,
                 mask=(cells_m < n_cells_m)[:, None] & (cells_p < n_cells_p)[None, :])

    if WRITE_OUT:
        out = acc * tl.load(beta_ptr).to(tl.float32)
        if HAS_LORA:
            lora = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
            for r_start in range(0, R, BLOCK_R):
                offs_r = r_start + tl.arange(0, BLOCK_R)
                mask_r = offs_r < R
                lo = tl.load(lo_ptr + offs_m[:, None] * stride_lom + offs_r[None, :] * stride_lor,
                             mask=mask_m[:, None] & mask_r[None, :], other=0.0)
                lmat = tl.load(lmat_ptr + offs_r[:, None] * stride_lmr + offs_p[None, :] * stride_lmp,
                               mask=mask_r[:, None] & mask_p[None, :], other=0.0)
                if DOT_DTYPE == tl.float32:
                    lora = tl.dot(lo.to(DOT_DTYPE), lmat.to(DOT_DTYPE), lora,
                                  input_precision=INPUT_PRECISION)
                else:
                    lora = tl.dot(lo.to(DOT_DTYPE), lmat.to(DOT_DTYPE), lora)
            out = out + lora * lora_scale
        if HAS_BIAS:
            out = out + tl.load(bias_ptr + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs_m[:, None] * stride_om + offs_p[None, :] * stride_op,
                 round_to(out, out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_p[None, :])


def _config(block_m, block_p, block_q, warps, stages, group_m=8):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_P": block_p, "BLOCK_Q": block_q, "GROUP_M": group_m},
                         num_warps=warps, num_stages=stages)


# Few, reasoned configs: generation cost per output scales as 1/BLOCK_M (every M-block
# regenerates its W tiles), so taller blocks help; decode (M <= 16) wants many P-blocks to fill
# the SMs. This kernel serves stream v1 up to the dispatch's V1_ONE_PASS_MAX_M rows, so no tile
# is wider than 128 (wider ones spill), and the 16-row tiles run 8 warps (with 4 they spill
# under Triton 3.6, the GPU image's). Every config here compiles spill-free under Triton 3.6 and
# 3.9 (tests/kernels/test_sm90_compile.py). BLOCK_Q stays a multiple of 4 (the v1 generator's
# column group).
AUTOTUNE_CONFIGS = [
    _config(16, 64, 128, 8, 3),
    _config(16, 128, 64, 8, 3),
    _config(32, 64, 64, 4, 3),
    _config(64, 128, 64, 4, 4),
    _config(128, 128, 64, 8, 3),
]
# Used under the interpreter and available to tests: small enough to interpret quickly.
INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_P": 32, "BLOCK_Q": 32, "GROUP_M": 4}

_one_pass_v1_autotuned = triton.autotune(
    configs=AUTOTUNE_CONFIGS,
    key=["M_BUCKET", "P", "Q", "W_TRANSPOSED", "INIT", "HAS_LORA", "DBETA", "WRITE_OUT", "DOT_DTYPE"],
)(_one_pass_v1_kernel)


def _m_bucket(m: int) -> int:
    return min(next_power_of_2(max(m, 1)), 8192)


def _launch(a, *, seed, stream, init, value_scale, w_transposed, P, lo, lmat_strides, lmat,
            bias, beta, lora_scale, out, dbeta_x, config):
    M, Q = a.shape
    R = lo.shape[1] if lo is not None else 0
    has_lora = R > 0
    dbeta_buffer = None
    if config is None and is_interpreting():
        config = INTERPRETER_CONFIG
    if dbeta_x is not None:
        dbeta_buffer = new_output((cdiv(M, 16), cdiv(P, 16)), torch.float32, a.device)
    seed_lo, seed_hi, stream_lo, stream_hi = spec.int32_words(seed, stream)
    dummy = a  # stands in for absent optional pointers; never read
    args = (
        a, lo if has_lora else dummy, lmat if has_lora else dummy, bias if bias is not None else dummy,
        beta, out if out is not None else dummy,
        dbeta_x if dbeta_x is not None else dummy, dbeta_buffer if dbeta_buffer is not None else dummy,
        M, P, Q, R,
        a.stride(0), a.stride(1),
        lo.stride(0) if has_lora else 0, lo.stride(1) if has_lora else 0,
        lmat_strides[0] if has_lora else 0, lmat_strides[1] if has_lora else 0,
        out.stride(0) if out is not None else 0, out.stride(1) if out is not None else 0,
        dbeta_x.stride(0) if dbeta_x is not None else 0, dbeta_x.stride(1) if dbeta_x is not None else 0,
        seed_lo, seed_hi, stream_lo, stream_hi, value_scale, lora_scale, _m_bucket(M),
    )
    meta = dict(
        W_TRANSPOSED=w_transposed, INIT=spec.INIT_CODES[init], HAS_LORA=has_lora,
        HAS_BIAS=bias is not None, WRITE_OUT=out is not None, DBETA=dbeta_x is not None,
        DOT_DTYPE=dot_dtype(a.dtype), INPUT_PRECISION=fp32_input_precision(),
        BLOCK_R=max(16, min(64, next_power_of_2(max(R, 1)))),
        enable_fp_fusion=False,  # bit-exact backbone: no FMA contraction (backbone_tile.py)
    )
    if config is not None:
        grid = (cdiv(M, config["BLOCK_M"]) * cdiv(P, config["BLOCK_P"]),)
        blocks = {key: config[key] for key in ("BLOCK_M", "BLOCK_P", "BLOCK_Q", "GROUP_M")}
        launch(_one_pass_v1_kernel, grid, *args, **meta, **blocks, num_warps=config.get("num_warps", 4),
               num_stages=config.get("num_stages", 2))
    else:
        def grid(meta_):
            return (cdiv(M, meta_["BLOCK_M"]) * cdiv(P, meta_["BLOCK_P"]),)
        _one_pass_v1_autotuned[grid](*args, **meta)
    return dbeta_buffer.sum() if dbeta_buffer is not None else None


def one_pass_v1_fwd(
    x: torch.Tensor, *, seed: int, stream: int, out_features: int, init: str,
    xa: torch.Tensor | None, lora_B: torch.Tensor | None, beta: torch.Tensor,
    bias: torch.Tensor | None, scale: float, config: dict | None = None,
) -> torch.Tensor:
    """y = beta * x @ W_seed^T + scale * xa @ lora_B^T + bias.

    x: (M, in_features); xa: (M, rank) = x @ lora_A^T, or None for rank 0; lora_B:
    (out_features, rank); beta: a one-element tensor (read on the device, no host sync);
    bias: (out_features,) or None. Returns (M, out_features) in x.dtype. Inputs are assumed
    validated by the caller (``lottalora.ops``). ``config`` pins the block sizes
    (keys BLOCK_M, BLOCK_P, BLOCK_Q, GROUP_M) instead of autotuning.
    """
    M, K = x.shape
    out = new_output((M, out_features), x.dtype, x.device)
    if M == 0:
        return out
    _launch(x, seed=seed, stream=stream, init=init, value_scale=spec.value_scale(K, init, 1),
            w_transposed=True, P=out_features, lo=xa,
            lmat_strides=(lora_B.stride(1), lora_B.stride(0)) if lora_B is not None else None,
            lmat=lora_B, bias=bias, beta=beta, lora_scale=scale, out=out, dbeta_x=None, config=config)
    return out


def one_pass_v1_bwd_dx(
    dy: torch.Tensor, *, seed: int, stream: int, in_features: int, init: str,
    dy_b: torch.Tensor | None, lora_A: torch.Tensor | None, beta: torch.Tensor, scale: float,
    x_for_dbeta: torch.Tensor | None = None, need_dx: bool = True, config: dict | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """dx = beta * dy @ W_seed + scale * dy_b @ lora_A, and optionally dbeta = <x, dy @ W_seed>.

    dy: (M, out_features); dy_b: (M, rank) = dy @ lora_B, or None; lora_A: (rank, in_features);
    x_for_dbeta: the forward input (M, in_features), or None to skip dbeta. Returns
    (dx or None when ``need_dx`` is False, dbeta as a float32 0-dim tensor or None).
    """
    M, N = dy.shape
    dx = new_output((M, in_features), dy.dtype, dy.device) if need_dx else None
    if M == 0:
        zero = torch.zeros((), dtype=torch.float32, device=dy.device)
        return dx, (zero if x_for_dbeta is not None else None)
    dbeta = _launch(dy, seed=seed, stream=stream, init=init,
                    value_scale=spec.value_scale(in_features, init, 1), w_transposed=False,
                    P=in_features, lo=dy_b,
                    lmat_strides=(lora_A.stride(0), lora_A.stride(1)) if lora_A is not None else None,
                    lmat=lora_A, bias=None, beta=beta, lora_scale=scale, out=dx,
                    dbeta_x=x_for_dbeta, config=config)
    return dx, dbeta
