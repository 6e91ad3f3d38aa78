"""The seeded op on one block of a bigger backbone: what a tensor-parallel rank computes.

    y = beta * x @ W_seed[r0:r1, c0:c1]^T + scale * (lora_input @ lora_A^T) @ lora_B^T + bias
    x: (*, c1 - c0); lora_A: (rank, c1 - c0); lora_B: (r1 - r0, rank); bias: (r1 - r0,) or None
    lora_input: x's shape (x itself when None; the dropped input for lora_dropout); y: (*, r1 - r0)

``spec`` is the whole layer's backbone; rows [r0, r1) and columns [c0, c1) of it are
regenerated here, never the rest. Column-parallel ranks own rows (all columns), row-parallel
ranks own columns (all rows); ``lottalora.distributed`` adds the collectives. It is
``seeded_linear`` on a ``BackboneBlock``: the same checks, autograd, custom ops and numerics;
which implementation computes a block is ``lottalora.ops.backend``'s decision.
"""

from __future__ import annotations

import torch

from ..backbone import BackboneBlock, BackboneSpec
from .functional import seeded_linear


def seeded_linear_shard(
    x: torch.Tensor, spec: BackboneSpec, rows: tuple[int, int], cols: tuple[int, int],
    lora_A: torch.Tensor | None, lora_B: torch.Tensor | None, beta: torch.Tensor,
    bias: torch.Tensor | None = None, scale: float = 1.0, lora_input: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = beta * x @ W_seed[rows, cols]^T + scale * (lora_input @ lora_A^T) @ lora_B^T + bias, with autograd.

    See the module docstring for the shapes. ``rows`` and ``cols`` are (start, stop) ranges of
    ``spec``'s backbone; everything else is as ``seeded_linear`` takes it.
    """
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"spec must be a lottalora.BackboneSpec, got {type(spec).__name__}")
    return seeded_linear(x, BackboneBlock(spec, rows, cols), lora_A, lora_B, beta, bias, scale, lora_input)
