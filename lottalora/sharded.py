"""The seeded linear op on one block of a bigger backbone: what a tensor-parallel rank computes.

    y = beta * x @ W_seed[r0:r1, c0:c1]^T + scale * (lora_input @ lora_A^T) @ lora_B^T + bias
    x: (*, c1 - c0); lora_A: (rank, c1 - c0); lora_B: (r1 - r0, rank); bias: (r1 - r0,) or None
    lora_input: x's shape (x itself when None; the dropped input for lora_dropout); y: (*, r1 - r0)

``spec`` is the whole layer's backbone (out_features x in_features); rows [r0, r1) and columns
[c0, c1) of it are regenerated here, never the rest. Column-parallel ranks own rows (all
columns), row-parallel ranks own columns (all rows); ``lottalora.distributed`` adds the
collectives. The block is generated in column chunks of about 2^21 values and dropped after
use, in the forward and again in the backward, so memory stays bounded whatever the block's
size. Unlike ``seeded_linear`` the generation is not fused into the matmul: each chunk is
generated (the Triton generator for CUDA tensors, the PyTorch stream otherwise, as
``resolve_backend`` picks) and multiplied by torch.matmul. The products and their epilogues are
the reference backend's loops (``lottalora/reference.py``) run on the block's chunks: fp32
accumulation (fp64 for fp64 inputs); stream v2 multiplies its exact +-1 signs and scales by
beta * std afterwards; stream v1 values are rounded to the input dtype first. This module adds
only the block's bookkeeping, the generator's choice and the autograd Function.
``seeded_linear_shard_ref`` is the readable float64 reference the tests hold it to.
"""

from __future__ import annotations

import contextlib

import torch

from . import reference
from .backend import resolve_backend
from .functional import _autocast_cast, _check_lora_input, _check_param
from .stream import BackboneSpec, backbone_block

BLOCK_VALUES = 1 << 21


def _column_chunks(spec: BackboneSpec, rows: tuple[int, int], cols: tuple[int, int]):
    """Column ranges [c0, c1) of the block (columns of the whole backbone), about BLOCK_VALUES
    weights each."""
    return reference._column_blocks(spec, rows, cols, BLOCK_VALUES)


def _weight_chunk(spec: BackboneSpec, rows, cols, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The chunk the product uses, in the compute dtype: v2's signs, v1's values rounded to ``dtype``."""
    if resolve_backend(device) != "triton":
        return reference._stream_block(spec, rows, cols, dtype, device)
    from lottalora_kernels.backbone_gen import generate_backbone

    compute = reference._compute_dtype(dtype)
    if spec.version == 2:
        return generate_backbone(spec.seed, spec.stream, spec.in_features, spec.init, rows, cols, device,
                                 version=2, dtype=compute, signs=True)
    return generate_backbone(spec.seed, spec.stream, spec.in_features, spec.init, rows, cols, device,
                             version=1, dtype=dtype).to(compute)


def _block_chunks(spec: BackboneSpec, rows, cols, dtype: torch.dtype, device: torch.device) -> reference.ColumnBlocks:
    """The block W_seed[rows, cols] as the reference loops take it: its chunks, keyed by the
    columns of the shard's input (the backbone's columns less cols[0]), each made on demand."""
    for c0, c1 in _column_chunks(spec, rows, cols):
        yield (c0 - cols[0], c1 - cols[0]), _weight_chunk(spec, rows, (c0, c1), dtype, device)


def _matrix(t: torch.Tensor, width: int) -> torch.Tensor:
    """t (*, width) as an (M, width) matrix. M comes from the leading dims, not from -1: an empty
    block (width 0) holds no elements, from which reshape(-1, 0) cannot infer M."""
    return t.reshape(t.shape[:-1].numel(), width)


class SeededShardFunction(torch.autograd.Function):
    """Autograd for ``seeded_linear_shard``; the backward regenerates the block."""

    @staticmethod
    def forward(ctx, x, lora_A, lora_B, beta, bias, spec: BackboneSpec, rows, cols, scale: float, lora_input=None):
        k = cols[1] - cols[0]
        x2d = _matrix(x, k)
        adapter_in = _matrix(lora_input, k) if lora_input is not None else x2d
        acc = reference._blocked_product(x2d, _block_chunks(spec, rows, cols, x.dtype, x.device), rows[1] - rows[0])
        xa = adapter_in @ lora_A.T if lora_A is not None else None
        out = reference._forward_epilogue(acc, spec, xa, lora_B, beta, bias, scale, x.dtype)
        # dbeta reads x; dA reads the adapter's input, which is x unless lora_input is given.
        separate = lora_input is not None
        need_x = ctx.needs_input_grad[3] or (not separate and ctx.needs_input_grad[1])
        need_lora_input = separate and ctx.needs_input_grad[1]
        ctx.save_for_backward(x2d if need_x else None, adapter_in if need_lora_input else None, xa, lora_A, lora_B,
                              beta)
        ctx.spec, ctx.rows, ctx.cols, ctx.scale, ctx.x_shape = spec, rows, cols, scale, x.shape
        ctx.separate_lora_input = separate
        return out.reshape(*x.shape[:-1], rows[1] - rows[0])

    @staticmethod
    def backward(ctx, dy):
        x2d, lora_in2d, xa, lora_A, lora_B, beta = ctx.saved_tensors
        need_dx, need_dA, need_dB, need_dbeta, need_dbias = ctx.needs_input_grad[:5]
        need_dlora_input = ctx.needs_input_grad[9]
        spec, rows, cols, scale, separate = ctx.spec, ctx.rows, ctx.cols, ctx.scale, ctx.separate_lora_input
        dy2d = _matrix(dy, rows[1] - rows[0])
        # dy @ B feeds dA and the adapter input's gradient: part of dx when the adapter reads x,
        # d lora_input (and none of dx) when it reads lora_input.
        lora_into_dx = lora_A is not None and not separate and need_dx
        need_dy_b = lora_A is not None and (need_dA or lora_into_dx or need_dlora_input)
        dy_b = dy2d @ lora_B if need_dy_b else None
        chunks = _block_chunks(spec, rows, cols, dy.dtype, dy.device)
        dx, dbeta = reference._blocked_bwd_dx(dy2d, chunks, cols[1] - cols[0], spec, dy_b if lora_into_dx else None,
                                              lora_A, beta, scale, x2d if need_dbeta else None, need_dx)
        if dx is not None:
            dx = dx.reshape(ctx.x_shape)
        if dbeta is not None:
            dbeta = dbeta.to(beta.dtype).reshape(beta.shape)
        dA = (dy_b.T @ (lora_in2d if separate else x2d)) * scale if need_dA else None
        dB = (dy2d.T @ xa) * scale if need_dB else None
        dbias = dy2d.sum(0) if need_dbias else None
        d_lora_input = _lora_input_grad(dy_b, lora_A, scale, ctx.x_shape) if need_dlora_input else None
        return dx, dA, dB, dbeta, dbias, None, None, None, None, d_lora_input


def _lora_input_grad(dy_b: torch.Tensor, lora_A: torch.Tensor, scale: float, shape: torch.Size) -> torch.Tensor:
    """scale * (dy @ B) @ A, summed in the compute dtype and rounded once, as dx's LoRA term is."""
    cdt = reference._compute_dtype(dy_b.dtype)
    return ((dy_b.to(cdt) @ lora_A.to(cdt)) * scale).to(dy_b.dtype).reshape(shape)


def _check_range(name: str, value, limit: int) -> tuple[int, int]:
    if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in value)):
        raise TypeError(f"{name} must be a (start, stop) tuple of ints, got {value!r}")
    if not 0 <= value[0] <= value[1] <= limit:
        raise ValueError(f"{name} must satisfy 0 <= start <= stop <= {limit}, got {value!r}")
    return value


def seeded_linear_shard(
    x: torch.Tensor, spec: BackboneSpec, rows: tuple[int, int], cols: tuple[int, int],
    lora_A: torch.Tensor | None, lora_B: torch.Tensor | None, beta: torch.Tensor,
    bias: torch.Tensor | None = None, scale: float = 1.0, lora_input: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = beta * x @ W_seed[rows, cols]^T + scale * (lora_input @ lora_A^T) @ lora_B^T + bias, with autograd.

    See the module docstring for the shapes. ``rows`` and ``cols`` are (start, stop) ranges of
    ``spec``'s backbone; lora_A and lora_B are both None for a rank-0 layer; beta has one
    element. ``lora_input`` is the adapter's input, as ``seeded_linear``'s: x's shape, dtype and
    device, x when None; its gradient is scale * (dy @ lora_B) @ lora_A and x's the backbone's
    alone. Inside torch.autocast, x, lora_A, lora_B, bias and lora_input are cast to the autocast
    dtype as ``seeded_linear`` casts them.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if lora_input is not None and not isinstance(lora_input, torch.Tensor):
        raise TypeError(f"lora_input must be a torch.Tensor or None, got {type(lora_input).__name__}")
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"spec must be a lottalora.BackboneSpec, got {type(spec).__name__}")
    rows = _check_range("rows", rows, spec.out_features)
    cols = _check_range("cols", cols, spec.in_features)
    autocast = torch.is_autocast_enabled(x.device.type)
    if autocast:
        dtype = torch.get_autocast_dtype(x.device.type)
        x, lora_A, lora_B, bias, lora_input = (_autocast_cast(t, dtype) for t in (x, lora_A, lora_B, bias, lora_input))
    if x.dim() == 0 or x.shape[-1] != cols[1] - cols[0]:
        raise ValueError(f"input must have shape (*, {cols[1] - cols[0]}) for cols={cols}, got {tuple(x.shape)}")
    if (lora_A is None) != (lora_B is None):
        raise ValueError("lora_A and lora_B must both be given or both be None")
    rank = lora_A.shape[0] if lora_A is not None else 0
    _check_param("lora_A", lora_A, (rank, cols[1] - cols[0]), x)
    _check_param("lora_B", lora_B, (rows[1] - rows[0], rank), x)
    _check_param("bias", bias, (rows[1] - rows[0],), x)
    if not isinstance(beta, torch.Tensor) or beta.numel() != 1:
        raise ValueError(f"beta must be a one-element tensor, got {beta!r}")
    _check_param("beta", beta, tuple(beta.shape), x)
    _check_lora_input(lora_input, lora_A, x)
    context = torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext()
    with context:
        return SeededShardFunction.apply(x, lora_A, lora_B, beta, bias, spec, rows, cols, float(scale), lora_input)


def seeded_linear_shard_ref(x, spec, rows, cols, lora_A, lora_B, beta, bias=None, scale=1.0,
                            lora_input=None) -> torch.Tensor:
    """The same function, readable: the dense block in float64 and plain autograd ops."""
    w = backbone_block(spec, rows, cols, device=x.device).double()
    y = beta.double() * (x.double() @ w.T)
    if lora_A is not None:
        adapter_in = x if lora_input is None else lora_input
        y = y + scale * (adapter_in.double() @ lora_A.double().T) @ lora_B.double().T
    if bias is not None:
        y = y + bias.double()
    return y
