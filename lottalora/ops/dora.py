"""DoRA over a seeded backbone (PEFT's ``use_dora=True``), without ever materialising W_seed.

DoRA (Liu et al. 2024, PEFT's ``DoraLinearLayer``) splits the adapted weight into a direction
and a trained magnitude per output row:

    W0 = beta * W_seed                                   (out, in)
    W' = m * (W0 + s B A) / n,   n = ||W0 + s B A||_row  (out,), detached in backward
    y  = (m / n) * (beta x W_seed^T + s (x A^T) B^T) + bias

m (out,) starts at the row norms of W0 + s B A (of W0 alone when B = 0). n is a constant to
autograd, as in PEFT and the paper's section 4.3: gradients reach m through m / n and reach A,
B, beta and x through the adapted product, never through the norm.

The row norms need no dense W_seed. Row o's squared norm is

    n[o]^2 = beta^2 ||W_seed[o]||^2 + 2 beta s sum_r B[o, r] (W_seed A^T)[o, r] + s^2 ||(B A)[o]||^2

with ``W_seed A^T`` (out, rank) the seeded op itself run on A as its input (x = A, rank rows:
one small launch on whichever backend runs the layer), ``||(B A)[o]||^2`` the row sums of
(B (A A^T)) * B (rank x rank work), and ``||W_seed[o]||^2`` known without generation for the
rademacher streams (every value is +-std: in * std^2, 1 to float32 rounding) and otherwise
(v1's gaussian and uniform) summed once per backbone from row chunks of about 2**20 values,
cached (``backbone_row_norms_squared``).

A conv's backbone is the same matrix (out, in // groups * prod(kernel_size)) with 2-D A, B
views, so ``weight_row_norms``, ``magnitude_scale`` and the two ``combine`` helpers serve it
too; ``dora_linear`` is the Linear's composition of them.

PEFT's lora_dropout under DoRA: in eval, or with no dropout, y is the formula above. In training
with dropout, PEFT adds to the base output (beta x W_seed^T + bias, on the undropped x) the term
(m/n - 1) * beta x_d W_seed^T + (m/n) * s (x_d A^T) B^T on the dropped input x_d, and so does
``dora_linear`` (``combine_dropped``): the backbone then runs twice, once on each input.
"""

from __future__ import annotations

import functools
import math

import torch

from ..backbone import BackboneBlock, BackboneSpec
from .backend import dense_block, resolve_backend, supported_dtypes
from .functional import seeded_linear
from .precision import accumulation_dtype, autocast_off

# Values per generated chunk when a backbone's row norms must be summed (v1 gaussian / uniform):
# bounded temporaries at any layer size.
ROW_NORM_CHUNK_VALUES = 1 << 20


def _as_block(spec: BackboneSpec | BackboneBlock) -> BackboneBlock:
    if isinstance(spec, BackboneBlock):
        return spec
    if isinstance(spec, BackboneSpec):
        return BackboneBlock.whole(spec)
    raise TypeError(f"spec must be a lottalora.BackboneSpec or BackboneBlock, got {type(spec).__name__}")


@functools.lru_cache(maxsize=256)
def _summed_row_norms_squared(block: BackboneBlock, device: torch.device) -> torch.Tensor:
    rows_per_chunk = max(1, ROW_NORM_CHUNK_VALUES // block.in_features)
    norms = torch.empty(block.out_features, dtype=torch.float64, device=device)
    for start in range(block.rows[0], block.rows[1], rows_per_chunk):
        stop = min(block.rows[1], start + rows_per_chunk)
        w = dense_block(block.spec, (start, stop), block.cols, device=device)
        norms[start - block.rows[0]: stop - block.rows[0]] = w.double().square().sum(1)
    return norms


def backbone_row_norms_squared(spec: BackboneSpec | BackboneBlock, device: torch.device | str | None = None
                               ) -> torch.Tensor:
    """||W_seed[o]||^2 for each row o of the backbone (or of the block's rows, over its columns):
    (out_features,) float64 on ``device`` (default CPU). Do not modify the result: it may be a
    cached tensor.

    Rademacher backbones (stream v2's default, v1's "rademacher") hold +-std in every entry, so
    a row's squared norm is in_features * std^2 (1 to float32 rounding), with no generation.
    Gaussian and uniform (stream v1) rows are summed from the stream in chunks of about
    ``ROW_NORM_CHUNK_VALUES`` values, once per (backbone, device): later calls reuse the
    result (``functools.lru_cache``, 256 backbones). On ``meta``: an empty meta tensor."""
    block = _as_block(spec)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "meta":
        return torch.empty(block.out_features, dtype=torch.float64, device=device)
    if block.spec.init == "rademacher":
        # Every value is +-std = float32(1 / sqrt(in_features)) of the whole layer (both versions),
        # made here by torch's own rounding to float32 so that torch.compile traces it; its square
        # is exact in float64.
        std = torch.full((block.out_features,), 1.0 / math.sqrt(block.spec.in_features), dtype=torch.float32,
                         device=device)
        return std.double().square() * block.in_features
    if torch.compiler.is_compiling():
        # Run eagerly, cache and all (a graph break once per layer), rather than traced. The
        # decorator form would import torch._dynamo, and with it Triton, at import time.
        return torch.compiler.disable(_summed_row_norms_squared)(block, device)
    return _summed_row_norms_squared(block, device)


def weight_row_norms(spec: BackboneSpec | BackboneBlock, lora_A: torch.Tensor | None, lora_B: torch.Tensor | None,
                     beta: torch.Tensor, scaling: float) -> torch.Tensor:
    """n = ||beta * W_seed + scaling * lora_B @ lora_A|| per output row, detached: (out_features,)
    in the accumulation dtype of beta's dtype (float32; float64 for float64), on beta's device.

    lora_A (rank, in_features) and lora_B (out_features, rank), or both None (n = |beta| *
    ||W_seed[o]||); beta one element. W_seed is never materialised: the cross term W_seed @
    lora_A^T runs as the seeded op on lora_A (``seeded_linear``), on the layer's backend. No
    gradient flows through n (PEFT's ``weight_norm.detach()``).

    Precision: the expansion sums squares, so where the adapter nearly cancels a row (n much
    below |beta| ||W_seed[o]||) its relative error grows like eps * (|beta| ||W_seed[o]|| / n)^2.
    It is summed in float64 (the (out, rank) and (rank, rank) terms always; the seeded cross
    term wherever the backend computes in float64, i.e. the torch backend), which leaves float32
    rounding of the result; the Triton backend's cross term is a float32 product, as accurate as
    PEFT's float32 norm while the adapter stays away from cancelling a row (DoRA starts with B = 0)."""
    block = _as_block(spec)
    out_dtype = accumulation_dtype(beta.dtype)
    wide = torch.float64 if torch.float64 in supported_dtypes(resolve_backend(beta.device)) else torch.float32
    # Autocast would round lora_A to its dtype before the cross term: the norms are the layer's
    # own constants, computed as outside it.
    with torch.no_grad(), autocast_off(beta.device.type):
        b = beta.detach().to(torch.float64).reshape(())
        norms_sq = backbone_row_norms_squared(block, beta.device) * (b * b)
        if lora_A is not None and lora_B is not None and scaling != 0:
            if lora_A.shape != (lora_B.shape[1], block.in_features) or lora_B.shape[0] != block.out_features:
                raise ValueError(f"lora_A {tuple(lora_A.shape)} and lora_B {tuple(lora_B.shape)} do not fit a "
                                 f"{block.out_features} x {block.in_features} backbone: (rank, in) and (out, rank) "
                                 "are expected")
            a = lora_A.detach().to(torch.float64)
            bm = lora_B.detach().to(torch.float64)
            unit = torch.ones(1, dtype=wide, device=a.device)
            w_a = seeded_linear(a.to(wide), block, None, None, unit, None, 0.0).T.to(torch.float64)  # W_seed @ A^T
            cross = (bm * w_a).sum(1)
            lora_sq = ((bm @ (a @ a.T)) * bm).sum(1)  # ||(B A)[o]||^2 without the (out, in) product
            norms_sq = norms_sq + (2 * scaling) * b * cross + (scaling * scaling) * lora_sq
        # Rounding can take a row that B A nearly cancels just below zero.
        return norms_sq.clamp_min(0).sqrt().to(out_dtype)


def magnitude_scale(magnitude: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """m / n per output row, (out_features,) in the dtype of ``norms``; differentiable in m only
    (``norms`` from ``weight_row_norms`` is a constant). A zero norm gives inf or NaN, as PEFT's
    division does."""
    return magnitude.to(norms.dtype) / norms.detach()


def _per_channel(t: torch.Tensor, channel_dim: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[channel_dim] = -1
    return t.reshape(shape)


def combine(adapted: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
            channel_dim: int = -1) -> torch.Tensor:
    """scale * adapted + bias along the output channels (``channel_dim`` of ``adapted``): DoRA's
    output when the adapter reads the layer's own input. ``adapted``: the layer's output without
    bias, beta x W_seed^T + s (x A^T) B^T; scale (out,) from ``magnitude_scale``. Summed in the
    accumulation dtype and rounded once to adapted's dtype."""
    acc = accumulation_dtype(adapted.dtype)
    y = adapted.to(acc) * _per_channel(scale.to(acc), channel_dim, adapted.dim())
    if bias is not None:
        y = y + _per_channel(bias.to(acc), channel_dim, adapted.dim())
    return y.to(adapted.dtype)


def combine_dropped(base: torch.Tensor, backbone_dropped: torch.Tensor, low_rank_dropped: torch.Tensor,
                    scale: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
    """PEFT's DoRA output when dropout gives the adapter its own input x_d (training with
    lora_dropout): base + (scale - 1) * backbone_dropped + scale * low_rank_dropped, with base =
    beta x W_seed^T + bias on the undropped x, backbone_dropped = beta x_d W_seed^T and
    low_rank_dropped = s (x_d A^T) B^T. Summed in the accumulation dtype, rounded once."""
    acc = accumulation_dtype(base.dtype)
    s = _per_channel(scale.to(acc), channel_dim, base.dim())
    y = base.to(acc) + (s - 1) * backbone_dropped.to(acc) + s * low_rank_dropped.to(acc)
    return y.to(base.dtype)


def dora_linear(
    x: torch.Tensor, spec: BackboneSpec | BackboneBlock, lora_A: torch.Tensor, lora_B: torch.Tensor,
    beta: torch.Tensor, bias: torch.Tensor | None, scaling: float, magnitude: torch.Tensor,
    lora_input: torch.Tensor | None = None,
) -> torch.Tensor:
    """DoRA's seeded linear: y = (m / n) * (beta x W_seed^T + scaling (x A^T) B^T) + bias.

    x: (*, in_features); lora_A (rank, in_features), lora_B (out_features, rank); beta one
    element; bias (out_features,) or None; magnitude m (out_features,); n =
    ``weight_row_norms`` (detached). lora_input: the adapter's input when dropout gives it one
    (training), x's shape: then PEFT's form, ``combine_dropped``. Returns (*, out_features) in
    x's dtype, differentiable in x, lora_A, lora_B, beta, bias, magnitude (and lora_input)."""
    if not isinstance(magnitude, torch.Tensor) or tuple(magnitude.shape) != (_as_block(spec).out_features,):
        got = tuple(magnitude.shape) if isinstance(magnitude, torch.Tensor) else type(magnitude).__name__
        raise ValueError(f"magnitude must be a tensor of shape ({_as_block(spec).out_features},), got {got}")
    scale = magnitude_scale(magnitude, weight_row_norms(spec, lora_A, lora_B, beta, scaling))
    if lora_input is None:
        adapted = seeded_linear(x, spec, lora_A, lora_B, beta, None, scaling)
        return combine(adapted, scale, bias)
    base = seeded_linear(x, spec, None, None, beta, bias, 0.0)
    backbone_dropped = seeded_linear(lora_input, spec, None, None, beta, None, 0.0)
    compute = accumulation_dtype(x.dtype)
    low_rank = scaling * ((lora_input.to(compute) @ lora_A.to(compute).T) @ lora_B.to(compute).T)
    return combine_dropped(base, backbone_dropped, low_rank, scale)
