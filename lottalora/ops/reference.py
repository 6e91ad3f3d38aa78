"""The seeded op, readable: the dense backbone block in float64 and plain autograd ops.

What every implementation (the Triton kernels, the torch backend, any block of a backbone) is
held to in the tests. Never used on the library's own paths: it materialises W_seed.
"""

from __future__ import annotations

import torch

from ..backbone import BackboneBlock, BackboneSpec, backbone_block


def seeded_linear_ref(
    x: torch.Tensor, spec: BackboneSpec | BackboneBlock, lora_A: torch.Tensor | None, lora_B: torch.Tensor | None,
    beta: torch.Tensor, bias: torch.Tensor | None = None, scale: float = 1.0, lora_input: torch.Tensor | None = None,
) -> torch.Tensor:
    """beta * x @ W^T + scale * (lora_input @ lora_A^T) @ lora_B^T + bias in float64, with W the
    layer's W_seed (or the block's, for a ``BackboneBlock``); the arguments as ``seeded_linear``
    takes them. Returns (*, out_features) float64."""
    block = spec if isinstance(spec, BackboneBlock) else BackboneBlock.whole(spec)
    w = backbone_block(block.spec, block.rows, block.cols, device=x.device).double()
    y = beta.double() * (x.double() @ w.T)
    if lora_A is not None:
        adapter_in = x if lora_input is None else lora_input
        y = y + scale * (adapter_in.double() @ lora_A.double().T) @ lora_B.double().T
    if bias is not None:
        y = y + bias.double()
    return y
