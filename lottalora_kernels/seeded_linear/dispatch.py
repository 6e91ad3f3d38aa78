"""Which kernel regime runs a seeded layer: one entry point per direction, chosen by M.

    stream v2, forward and input gradient:
                         M <= DECODE_MAX_M       -> decode (W or W^T on the left, split over K)
                         otherwise                -> two_phase (a chunk of W once, then cuBLAS)
    stream v1:           M <= V1_ONE_PASS_MAX_M  -> one_pass_v1 (W regenerated per row block)
                         otherwise                -> two_phase
    float32 on a GPU, either version              -> two_phase (cuBLAS follows torch's TF32
                                                     setting; an IEEE float32 tl.dot has no
                                                     tensor-core path)
    one_pass (stream v2, 16-bit on a GPU, any M) -> when ``one_pass_enabled()``: every M, for
                                                     whole layers and for blocks of a layer
                                                     (tensor parallel); else only when forced
                                                     (regime="one_pass")

The one-pass regime (one launch per op, W made inside the tensor-core matmul) is off by default:
a kernel runs on a GPU only once the GPU tests have held its bits there (tests/kernels/test_gpu.py,
run by ``bash benchmarks/gpu_session.sh all``), and no GPU has yet. ``LOTTALORA_ONE_PASS=1`` turns
it on (the GPU session times it that way; the tests hold it to the reference under the
interpreter). Its predicted crossover against the proven regimes is every M
(benchmarks/results/predicted_sm90.md: 0.17-0.98x the stored-weight baseline, where decode and
two-phase measured 0.27-2.27x on an H100); ``ONE_PASS_MAX_M`` is where a measurement would cap it.

The thresholds and the evidence for each (instruction counts, and the H100 measurement of
2026-11-24) are in benchmarks/NOTES.md, "Dispatch"; ``benchmarks.speed`` times every regime on a
GPU to move them.
"""

from __future__ import annotations

import torch

from ..dtypes import fp32_input_precision
from ..environment import flag
from ..launch import direct_launches
from . import decode, one_pass, one_pass_v1, two_phase

REGIMES = ("decode", "one_pass", "one_pass_v1", "two_phase")
DECODE_MAX_M = decode.MAX_M
V1_ONE_PASS_MAX_M = 128
ONE_PASS_MAX_M: int | None = None  # None: every M (the predicted crossover); a measurement sets it


def one_pass_enabled() -> bool:
    """Whether the choice takes the one-pass regime: ``LOTTALORA_ONE_PASS=1`` (read at every call)."""
    return flag("LOTTALORA_ONE_PASS")


def replay_state() -> tuple:
    """What a replay of a call's launches made now depends on besides the call's tensors and
    arguments, for the key of a replayed call (``lottalora.ops.eager``): the settings that pick
    the regime and its launches (the one-pass switch, ``ONE_PASS_MAX_M``, ``DECODE_MAX_M``,
    ``V1_ONE_PASS_MAX_M``, the two-phase chunk sizes), whether launches are
    direct (a replay bound while they were not launches through Triton every time) and float32's
    tensor-core precision (a constexpr of the launches)."""
    return (one_pass_enabled(), ONE_PASS_MAX_M, DECODE_MAX_M, V1_ONE_PASS_MAX_M, two_phase.CHUNK_BYTES,
            two_phase.MAX_CHUNK_BYTES, two_phase.MAX_PRODUCT_BYTES, direct_launches(), fp32_input_precision())


def _v1_regime(m: int, dtype: torch.dtype | None, on_gpu: bool) -> str:
    if on_gpu and dtype == torch.float32:
        return "two_phase"
    return "one_pass_v1" if m <= V1_ONE_PASS_MAX_M else "two_phase"


def _v2_regime(m: int, dtype: torch.dtype | None, on_gpu: bool) -> str:
    # The decode and one-pass kernels' fast paths make 16-bit operand pairs: float32 on a GPU
    # goes to cuBLAS.
    if on_gpu and dtype == torch.float32:
        return "two_phase"
    if one_pass_enabled() and (ONE_PASS_MAX_M is None or m <= ONE_PASS_MAX_M):
        return "one_pass"
    return "decode" if m <= DECODE_MAX_M else "two_phase"


def block_regime(version: int, dtype: torch.dtype | None = None, on_gpu: bool = False) -> str | None:
    """The regime for a block of a bigger backbone (a tensor-parallel rank's rows or columns):
    "one_pass" where the one-pass regime is on and applies, else None (the caller then runs the
    generator's chunks through a GEMM)."""
    if version != 2 or (on_gpu and dtype == torch.float32) or not one_pass_enabled():
        return None
    return "one_pass"


def seeded_block_fwd(x: torch.Tensor, *, seed: int, stream: int, in_features: int, rows: tuple[int, int],
                     cols: tuple[int, int], lora_A, lora_B, beta, bias, scale: float, lora_x=None,
                     bind: bool = False):
    """``one_pass.one_pass_fwd`` on a block (see it for shapes, and ``bind``): the regime
    ``block_regime`` names."""
    return one_pass.one_pass_fwd(x, seed=seed, stream=stream, in_features=in_features, rows=rows, cols=cols,
                                 lora_A=lora_A, lora_B=lora_B, beta=beta, bias=bias, scale=scale, lora_x=lora_x,
                                 bind=bind)


def seeded_block_bwd_dx(dy: torch.Tensor, *, seed: int, stream: int, in_features: int, rows: tuple[int, int],
                        cols: tuple[int, int], dy_b, lora_A, beta, scale: float, x_for_dbeta=None, need_dx=True,
                        bind: bool = False):
    """``one_pass.one_pass_bwd_dx`` on a block (see it for shapes, and ``bind``)."""
    return one_pass.one_pass_bwd_dx(dy, seed=seed, stream=stream, in_features=in_features, rows=rows, cols=cols,
                                    dy_b=dy_b, lora_A=lora_A, beta=beta, scale=scale, x_for_dbeta=x_for_dbeta,
                                    need_dx=need_dx, bind=bind)


def forward_regime(version: int, m: int, dtype: torch.dtype | None = None, on_gpu: bool = False) -> str:
    """The regime ``seeded_linear_fwd`` runs for ``m`` rows of a stream-``version`` layer."""
    return _v2_regime(m, dtype, on_gpu) if version == 2 else _v1_regime(m, dtype, on_gpu)


def input_grad_regime(version: int, m: int, dtype: torch.dtype | None = None, on_gpu: bool = False) -> str:
    """The regime ``seeded_linear_bwd_dx`` runs for ``m`` rows of a stream-``version`` layer."""
    return _v2_regime(m, dtype, on_gpu) if version == 2 else _v1_regime(m, dtype, on_gpu)


def seeded_linear_fwd(
    x: torch.Tensor, *, seed: int, stream: int, version: int, init: str, out_features: int,
    lora_A: torch.Tensor | None, lora_B: torch.Tensor | None, beta: torch.Tensor, bias: torch.Tensor | None,
    scale: float, regime: str | None = None, lora_x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y (M, out_features) = beta * x @ W_seed^T + scale * xa @ lora_B^T + bias, xa = lora_x @ lora_A^T
    (M, rank) or None); x and lora_x (the adapter's input, x when None): (M, K); lora_A: (rank, K)
    or None.

    The decode regime makes xa inside its backbone kernel; the others take it from cuBLAS.
    ``regime`` (one of ``REGIMES``) overrides the choice (tests, benchmarks)."""
    regime = regime or forward_regime(version, x.shape[0], x.dtype, x.is_cuda)
    if regime == "decode":
        return decode.decode_fwd(x, seed=seed, stream=stream, out_features=out_features, lora_A=lora_A,
                                 lora_B=lora_B, beta=beta, bias=bias, scale=scale, lora_x=lora_x)
    if regime == "one_pass":
        if version != 2:
            raise ValueError("the one_pass regime serves stream v2 only")
        return one_pass.one_pass_fwd(x, seed=seed, stream=stream, in_features=x.shape[1], rows=(0, out_features),
                                     cols=(0, x.shape[1]), lora_A=lora_A, lora_B=lora_B, beta=beta, bias=bias,
                                     scale=scale, lora_x=lora_x)
    xa = _adapter_product(x, lora_A, lora_x)
    if regime == "two_phase":
        y = two_phase.two_phase_fwd(x, seed=seed, stream=stream, version=version, init=init,
                                    out_features=out_features, xa=xa, lora_B=lora_B, beta=beta, bias=bias,
                                    scale=scale)
    else:
        y = one_pass_v1.one_pass_v1_fwd(x, seed=seed, stream=stream, out_features=out_features, init=init, xa=xa,
                                        lora_B=lora_B, beta=beta, bias=bias, scale=scale)
    return y, xa


def _adapter_product(x: torch.Tensor, lora_A: torch.Tensor | None, lora_x: torch.Tensor | None):
    """xa = (lora_x or x) @ lora_A^T by cuBLAS, for the regimes that do not make it in a kernel."""
    return torch.mm(lora_x if lora_x is not None else x, lora_A.t()) if lora_A is not None else None


class _AdapterProductThen:
    """A replay of a regime that takes xa from cuBLAS (two-phase): ``replay(x, lora_A, lora_B,
    beta, bias, lora_x) -> (y, xa)``, xa made as ``seeded_linear_fwd`` makes it, then the bound
    launches (``two_phase.TwoPhaseForwardReplay``)."""

    __slots__ = ("replay",)

    def __init__(self, replay):
        self.replay = replay

    def __call__(self, x, lora_A, lora_B, beta, bias, lora_x):
        xa = _adapter_product(x, lora_A, lora_x)
        return self.replay(x, xa, lora_B, beta, bias), xa


def seeded_linear_bwd_dx(
    dy: torch.Tensor, *, seed: int, stream: int, version: int, init: str, in_features: int,
    dy_b: torch.Tensor | None, lora_A: torch.Tensor | None, beta: torch.Tensor, scale: float,
    x_for_dbeta: torch.Tensor | None = None, need_dx: bool = True, regime: str | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx = beta * dy @ W_seed + scale * dy_b @ lora_A, dbeta = <x, dy @ W_seed>); see
    ``two_phase.two_phase_bwd_dx`` for shapes."""
    regime = regime or input_grad_regime(version, dy.shape[0], dy.dtype, dy.is_cuda)
    if regime == "decode":
        if version != 2:
            raise ValueError("the decode regime serves stream v2 only")
        return decode.decode_bwd_dx(dy, seed=seed, stream=stream, in_features=in_features, dy_b=dy_b, lora_A=lora_A,
                                    beta=beta, scale=scale, x_for_dbeta=x_for_dbeta, need_dx=need_dx)
    if regime == "one_pass":
        if version != 2:
            raise ValueError("the one_pass regime serves stream v2 only")
        return one_pass.one_pass_bwd_dx(dy, seed=seed, stream=stream, in_features=in_features,
                                        rows=(0, dy.shape[1]), cols=(0, in_features), dy_b=dy_b, lora_A=lora_A,
                                        beta=beta, scale=scale, x_for_dbeta=x_for_dbeta, need_dx=need_dx)
    if regime == "two_phase":
        return two_phase.two_phase_bwd_dx(dy, seed=seed, stream=stream, version=version, init=init,
                                          in_features=in_features, dy_b=dy_b, lora_A=lora_A, beta=beta, scale=scale,
                                          x_for_dbeta=x_for_dbeta, need_dx=need_dx)
    if version != 1:
        raise ValueError(f"the {regime!r} regime serves stream v1 only")
    return one_pass_v1.one_pass_v1_bwd_dx(dy, seed=seed, stream=stream, in_features=in_features, init=init,
                                          dy_b=dy_b, lora_A=lora_A, beta=beta, scale=scale, x_for_dbeta=x_for_dbeta,
                                          need_dx=need_dx)


def layer_launches_bind(version: int, m: int, dtype: torch.dtype | None = None, on_gpu: bool = False) -> bool:
    """Whether ``seeded_linear_fwd_replayable`` (and the input gradient's) may bind the launches
    of ``m`` rows of a whole stream-``version`` layer: False for stream v1's one-pass regime,
    which never does. True is no promise: decode with more than one row chunk and two-phase
    chunks off the call spans bind nothing either (their eager keys map to NO_PLAN)."""
    return version == 2 or forward_regime(version, m, dtype, on_gpu) != "one_pass_v1"


def seeded_linear_fwd_replayable(
    x: torch.Tensor, *, seed: int, stream: int, version: int, init: str, out_features: int,
    lora_A: torch.Tensor | None, lora_B: torch.Tensor | None, beta: torch.Tensor, bias: torch.Tensor | None,
    scale: float, lora_x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, object | None]:
    """``seeded_linear_fwd``'s (y, xa), and a replay of its launches, ``replay(x, lora_A, lora_B,
    beta, bias, lora_x) -> (y, xa)``, for later calls with tensors keyed alike and the same
    other arguments, made where the regime's launches are bound (one_pass:
    ``one_pass.ForwardReplay``; decode, one row chunk: ``decode.DecodeForwardReplay``; two-phase,
    chunks that start on call spans: ``two_phase.TwoPhaseForwardReplay`` after cuBLAS's xa); None
    elsewhere (stream v1's one-pass regime goes through its launcher every time)."""
    regime = forward_regime(version, x.shape[0], x.dtype, x.is_cuda)
    if regime == "decode":
        return decode.decode_fwd(x, seed=seed, stream=stream, out_features=out_features, lora_A=lora_A,
                                 lora_B=lora_B, beta=beta, bias=bias, scale=scale, lora_x=lora_x, bind=True)
    if regime == "two_phase":
        xa = _adapter_product(x, lora_A, lora_x)
        y, replay = two_phase.two_phase_fwd(x, seed=seed, stream=stream, version=version, init=init,
                                            out_features=out_features, xa=xa, lora_B=lora_B, beta=beta, bias=bias,
                                            scale=scale, bind=True)
        return y, xa, (_AdapterProductThen(replay) if replay is not None else None)
    if regime == "one_pass":
        return one_pass.one_pass_fwd(x, seed=seed, stream=stream, in_features=x.shape[1], rows=(0, out_features),
                                     cols=(0, x.shape[1]), lora_A=lora_A, lora_B=lora_B, beta=beta, bias=bias,
                                     scale=scale, lora_x=lora_x, bind=True)
    y, xa = seeded_linear_fwd(x, seed=seed, stream=stream, version=version, init=init, out_features=out_features,
                              lora_A=lora_A, lora_B=lora_B, beta=beta, bias=bias, scale=scale, lora_x=lora_x)
    return y, xa, None


def seeded_linear_bwd_dx_replayable(
    dy: torch.Tensor, *, seed: int, stream: int, version: int, init: str, in_features: int,
    dy_b: torch.Tensor | None, lora_A: torch.Tensor | None, beta: torch.Tensor, scale: float,
    x_for_dbeta: torch.Tensor | None = None, need_dx: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, object | None]:
    """``seeded_linear_bwd_dx``'s (dx, dbeta), and a replay of its launches, ``replay(dy, dy_b,
    lora_A, beta, x_for_dbeta) -> (dx, dbeta)``, where the regime's launches are bound (one_pass:
    ``one_pass.InputGradReplay``; decode, one row chunk: ``decode.DecodeInputGradReplay``;
    two-phase: ``two_phase.TwoPhaseInputGradReplay``); None elsewhere."""
    regime = input_grad_regime(version, dy.shape[0], dy.dtype, dy.is_cuda)
    if regime == "two_phase":
        return two_phase.two_phase_bwd_dx(dy, seed=seed, stream=stream, version=version, init=init,
                                          in_features=in_features, dy_b=dy_b, lora_A=lora_A, beta=beta, scale=scale,
                                          x_for_dbeta=x_for_dbeta, need_dx=need_dx, bind=True)
    if regime == "decode":
        return decode.decode_bwd_dx(dy, seed=seed, stream=stream, in_features=in_features, dy_b=dy_b,
                                    lora_A=lora_A, beta=beta, scale=scale, x_for_dbeta=x_for_dbeta,
                                    need_dx=need_dx, bind=True)
    if regime == "one_pass":
        return one_pass.one_pass_bwd_dx(dy, seed=seed, stream=stream, in_features=in_features,
                                        rows=(0, dy.shape[1]), cols=(0, in_features), dy_b=dy_b, lora_A=lora_A,
                                        beta=beta, scale=scale, x_for_dbeta=x_for_dbeta, need_dx=need_dx,
                                        bind=True)
    dx, dbeta = seeded_linear_bwd_dx(dy, seed=seed, stream=stream, version=version, init=init,
                                     in_features=in_features, dy_b=dy_b, lora_A=lora_A, beta=beta, scale=scale,
                                     x_for_dbeta=x_for_dbeta, need_dx=need_dx)
    return dx, dbeta, None
