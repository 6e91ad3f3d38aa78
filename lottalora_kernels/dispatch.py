"""Which kernel regime runs a seeded layer: one entry point per direction, chosen by M.

    stream v2, forward and input gradient:
                         M <= DECODE_MAX_M  -> seeded_decode (W or W^T on the left, split over K)
                         otherwise, and float32 on a GPU -> seeded_two_phase (W chunk once, then cuBLAS)
    stream v1:           M <= V1_ONE_PASS_MAX_M -> seeded_matmul (one pass, W per row block)
                         otherwise, and float32 on a GPU -> seeded_two_phase

The thresholds were set from instruction counts (benchmarks/NOTES.md, "Dispatch"): the decode
kernel's main loop costs 1.8-2.6 SASS per weight for M <= 32 (M only adds MMAs); a 64-wide
accumulator spills, so past M = 32 the two-phase path (one generation, then a GEMM at
tensor-core speed) takes over. Measured on an H100 (CUDA graphs, bf16): at M = 1 and 16 the
decode regime takes 12-26 us where the two-phase one takes 37-141 us; M = 17-32 moved to decode
on the count (2.69 against 2.12 SASS per weight at M = 16), not yet timed. At M = 128 the
two-phase path is 1.3-2.3x cuBLAS + LoRA, the case a wgmma kernel should take next. Stream v1
generates a weight in 24-65 SASS, so its one-pass kernel is worth it only while W is
regenerated few times (M up to a couple of row blocks). Float32 layers on a GPU take the
two-phase path at every M: an IEEE float32 tl.dot has no tensor-core path (and spilled in the
one-pass kernel), while cuBLAS follows torch's TF32 setting. ``benchmarks.speed`` measures
every regime on a GPU to set these.
"""

from __future__ import annotations

import torch

from . import seeded_decode, seeded_matmul, seeded_two_phase

DECODE_MAX_M = seeded_decode.MAX_M
V1_ONE_PASS_MAX_M = 128


def _v1_regime(m: int, dtype: torch.dtype | None, on_gpu: bool) -> str:
    if on_gpu and dtype == torch.float32:
        return "two_phase"
    return "one_pass" if m <= V1_ONE_PASS_MAX_M else "two_phase"


def _v2_regime(m: int, dtype: torch.dtype | None, on_gpu: bool) -> str:
    # The decode kernels' fast paths make 16-bit operand pairs; float32 on a GPU goes to cuBLAS
    # through the two-phase path.
    small = m <= DECODE_MAX_M and not (on_gpu and dtype == torch.float32)
    return "decode" if small else "two_phase"


def forward_regime(version: int, m: int, dtype: torch.dtype | None = None, on_gpu: bool = False) -> str:
    return _v2_regime(m, dtype, on_gpu) if version == 2 else _v1_regime(m, dtype, on_gpu)


def input_grad_regime(version: int, m: int, dtype: torch.dtype | None = None, on_gpu: bool = False) -> str:
    return _v2_regime(m, dtype, on_gpu) if version == 2 else _v1_regime(m, dtype, on_gpu)


def seeded_linear_fwd(
    x: torch.Tensor, *, seed: int, stream: int, version: int, init: str, out_features: int,
    lora_A: torch.Tensor | None, lora_B: torch.Tensor | None, beta: torch.Tensor, bias: torch.Tensor | None,
    scale: float, regime: str | None = None, lora_x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y (M, out_features) = beta * x @ W_seed^T + scale * xa @ lora_B^T + bias, xa = lora_x @ lora_A^T
    (M, rank) or None); x and lora_x (the adapter's input, x when None): (M, K); lora_A: (rank, K)
    or None.

    The decode regime makes xa inside its backbone kernel (no separate GEMV launch); the others
    take it from cuBLAS. ``regime`` ("decode", "one_pass", "two_phase") overrides the choice
    (tests, benchmarks)."""
    regime = regime or forward_regime(version, x.shape[0], x.dtype, x.is_cuda)
    if regime == "decode":
        return seeded_decode.seeded_decode_fwd(x, seed=seed, stream=stream, out_features=out_features,
                                               lora_A=lora_A, lora_B=lora_B, beta=beta, bias=bias, scale=scale,
                                               lora_x=lora_x)
    xa = torch.mm(lora_x if lora_x is not None else x, lora_A.t()) if lora_A is not None else None
    if regime == "two_phase":
        y = seeded_two_phase.two_phase_fwd(x, seed=seed, stream=stream, version=version, init=init,
                                           out_features=out_features, xa=xa, lora_B=lora_B, beta=beta, bias=bias,
                                           scale=scale)
    else:
        y = seeded_matmul.seeded_linear_fwd(x, seed=seed, stream=stream, out_features=out_features, init=init,
                                            xa=xa, lora_B=lora_B, beta=beta, bias=bias, scale=scale)
    return y, xa


def seeded_linear_bwd_dx(
    dy: torch.Tensor, *, seed: int, stream: int, version: int, init: str, in_features: int,
    dy_b: torch.Tensor | None, lora_A: torch.Tensor | None, beta: torch.Tensor, scale: float,
    x_for_dbeta: torch.Tensor | None = None, need_dx: bool = True, regime: str | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx = beta * dy @ W_seed + scale * dy_b @ lora_A, dbeta = <x, dy @ W_seed>); see
    ``seeded_two_phase.two_phase_bwd_dx`` for shapes."""
    regime = regime or input_grad_regime(version, dy.shape[0], dy.dtype, dy.is_cuda)
    if regime == "decode":
        if version != 2:
            raise ValueError("the decode regime serves stream v2 only")
        return seeded_decode.seeded_decode_bwd_dx(dy, seed=seed, stream=stream, in_features=in_features, dy_b=dy_b,
                                                  lora_A=lora_A, beta=beta, scale=scale, x_for_dbeta=x_for_dbeta,
                                                  need_dx=need_dx)
    if regime == "two_phase":
        return seeded_two_phase.two_phase_bwd_dx(dy, seed=seed, stream=stream, version=version, init=init,
                                                 in_features=in_features, dy_b=dy_b, lora_A=lora_A, beta=beta,
                                                 scale=scale, x_for_dbeta=x_for_dbeta, need_dx=need_dx)
    if version != 1:
        raise ValueError(f"the {regime!r} regime serves stream v1 input gradients only")
    return seeded_matmul.seeded_linear_bwd_dx(dy, seed=seed, stream=stream, in_features=in_features, init=init,
                                              dy_b=dy_b, lora_A=lora_A, beta=beta, scale=scale,
                                              x_for_dbeta=x_for_dbeta, need_dx=need_dx)
