"""The Triton launchers registered as torch.library custom ops.

``torch.compile`` then sees two opaque ops with known output shapes (the fake implementations)
instead of tracing into Python launchers, and the autograd Function in ``functional.py`` calls
them. Seeds and streams travel as four 32-bit words because a schema ``int`` is 64-bit signed
and a seed may use all 64 bits.
"""

from __future__ import annotations

import torch

from lottalora_kernels import stream_spec as spec

from .stream import BackboneSpec


def spec_words(s: BackboneSpec) -> list[int]:
    """[seed_lo, seed_hi, stream_lo, stream_hi], each in [0, 2^32)."""
    return [*spec.split_u64(s.seed), *spec.split_u64(s.stream)]


def _unwords(words: list[int]) -> tuple[int, int]:
    return words[0] | (words[1] << 32), words[2] | (words[3] << 32)


@torch.library.custom_op("lottalora::seeded_linear_fwd", mutates_args=())
def seeded_linear_fwd_op(
    x: torch.Tensor, xa: torch.Tensor | None, lora_B: torch.Tensor | None, beta: torch.Tensor,
    bias: torch.Tensor | None, words: list[int], out_features: int, init: str, scale: float,
) -> torch.Tensor:
    """y (M, out_features) = beta * x @ W_seed^T + scale * xa @ lora_B^T + bias; x: (M, in)."""
    from lottalora_kernels.seeded_matmul import seeded_linear_fwd

    seed, stream = _unwords(words)
    return seeded_linear_fwd(x, seed=seed, stream=stream, out_features=out_features, init=init, xa=xa,
                             lora_B=lora_B, beta=beta, bias=bias, scale=scale)


@seeded_linear_fwd_op.register_fake
def _(x, xa, lora_B, beta, bias, words, out_features, init, scale):
    return x.new_empty((x.shape[0], out_features))


@torch.library.custom_op("lottalora::seeded_linear_bwd_dx", mutates_args=())
def seeded_linear_bwd_dx_op(
    dy: torch.Tensor, dy_b: torch.Tensor | None, lora_A: torch.Tensor | None, beta: torch.Tensor,
    x_for_dbeta: torch.Tensor | None, words: list[int], in_features: int, init: str, scale: float,
    need_dx: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx (M, in_features), dbeta float32 scalar); dx is empty (0, in) when not needed and
    dbeta is 0 when ``x_for_dbeta`` is None (custom ops return tensors, not None)."""
    from lottalora_kernels.seeded_matmul import seeded_linear_bwd_dx

    seed, stream = _unwords(words)
    dx, dbeta = seeded_linear_bwd_dx(dy, seed=seed, stream=stream, in_features=in_features, init=init,
                                     dy_b=dy_b, lora_A=lora_A, beta=beta, scale=scale,
                                     x_for_dbeta=x_for_dbeta, need_dx=need_dx)
    if dx is None:
        dx = dy.new_empty((0, in_features))
    if dbeta is None:
        dbeta = torch.zeros((), dtype=torch.float32, device=dy.device)
    return dx, dbeta


@seeded_linear_bwd_dx_op.register_fake
def _(dy, dy_b, lora_A, beta, x_for_dbeta, words, in_features, init, scale, need_dx):
    rows = dy.shape[0] if need_dx else 0
    return dy.new_empty((rows, in_features)), dy.new_empty((), dtype=torch.float32)
