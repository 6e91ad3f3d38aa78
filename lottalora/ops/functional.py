"""``seeded_linear``: the seeded op as a function, what ``lottalora.Linear`` calls.

One pass down: the arguments are checked once (``checks``), the backend is chosen once
(``backend``), and ``autograd.run`` calls the op, through its autograd node only when something
needs one. A call keyed like one before whose work was one kernel launch runs that call's plan
instead (``eager``: the same decisions, not made again).
"""

from __future__ import annotations

import torch

from ..backbone import BackboneBlock, BackboneSpec
from . import autograd, eager
from .checks import check_seeded_call


def seeded_linear(
    x: torch.Tensor, spec: BackboneSpec | BackboneBlock, lora_A: torch.Tensor | None, lora_B: torch.Tensor | None,
    beta: torch.Tensor, bias: torch.Tensor | None = None, scale: float = 1.0, lora_input: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = beta * x @ W_seed^T + scale * (lora_input @ lora_A^T) @ lora_B^T + bias, with autograd.

    x: (*, in_features); lora_A: (rank, in_features) and lora_B: (out_features, rank), or both
    None for a rank-0 layer; beta: a one-element floating-point tensor; bias: (out_features,) or
    None; scale: a finite real number; lora_input: the adapter's input, x's shape, dtype and
    device (x when None; e.g. dropout(x) for PEFT's lora_dropout, fused like x's own adapter).
    Returns (*, out_features) in x.dtype. ``spec`` may be a ``BackboneBlock`` of a layer instead
    of its spec: then W_seed is that block, and in_features and out_features are the block's
    (``seeded_linear_shard``). Inside torch.autocast, the tensors are cast to the autocast dtype
    as nn.Linear's are (float64 ones are left alone) and the op accumulates in float32 as outside
    it. W_seed is regenerated from ``spec``, never stored. Differentiable to any order, in reverse
    and forward mode and under torch.func transforms (``lottalora.ops.autograd``). Meta tensors
    (x and the parameters all on ``meta``) give meta outputs of the right shape and dtype.
    """
    key = eager.call_key(x, spec, lora_A, lora_B, beta, bias, scale, lora_input)
    if key is not None:
        plan = eager.lookup(key)
        if plan is not None and plan is not eager.NO_PLAN:
            return plan(x, lora_A, lora_B, beta, bias, lora_input)
    checked_x, block, lora_A, lora_B, bias, lora_input, scale, backend = check_seeded_call(
        x, spec, lora_A, lora_B, beta, bias, scale, lora_input)
    if key is not None and plan is None:
        return eager.first_call(key, checked_x, spec, block, lora_A, lora_B, beta, bias, scale, backend, lora_input)
    return autograd.run(checked_x, block, lora_A, lora_B, beta, bias, scale, backend, lora_input)
