"""The torch backend: the seeded linear layer's forward and input gradient in plain PyTorch.

Same contract as ``lottalora_kernels.seeded_matmul`` (fp32 accumulation, W_seed rounded to the
input dtype, the same formulas), on any device, without Triton. The backbone is regenerated in
column blocks of at most ``block_elements`` values and dropped after use, so peak memory stays
bounded whatever the layer's size; float64 inputs are computed in float64 (for gradcheck).
"""

from __future__ import annotations

import torch

from lottalora_kernels.runtime import new_output

from .stream import BackboneSpec, backbone_block

DEFAULT_BLOCK_ELEMENTS = 1 << 20


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _column_blocks(spec: BackboneSpec, block_elements: int):
    width = max(4, (block_elements // spec.out_features) // 4 * 4)
    for start in range(0, spec.in_features, width):
        yield start, min(start + width, spec.in_features)


def _weight_block(spec: BackboneSpec, cols: tuple[int, int], dtype: torch.dtype, device) -> torch.Tensor:
    """W_seed[:, cols] rounded to ``dtype`` (as the kernels do), then widened for the matmul."""
    return backbone_block(spec, cols=cols, device=device).to(dtype).to(_compute_dtype(dtype))


def seeded_linear_ref_fwd(
    x: torch.Tensor, spec: BackboneSpec, xa: torch.Tensor | None, lora_B: torch.Tensor | None,
    beta: torch.Tensor, bias: torch.Tensor | None, scale: float,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """y = beta * x @ W_seed^T + scale * xa @ lora_B^T + bias; x: (M, in), returns (M, out)."""
    cdt = _compute_dtype(x.dtype)
    acc = torch.zeros((x.shape[0], spec.out_features), dtype=cdt, device=x.device)
    for c0, c1 in _column_blocks(spec, block_elements):
        acc += x[:, c0:c1].to(cdt) @ _weight_block(spec, (c0, c1), x.dtype, x.device).T
    out = acc * beta.to(cdt)
    if xa is not None:
        out = out + (xa.to(cdt) @ lora_B.to(cdt).T) * scale
    if bias is not None:
        out = out + bias.to(cdt)
    return out.to(x.dtype)


def seeded_linear_ref_bwd_dx(
    dy: torch.Tensor, spec: BackboneSpec, dy_b: torch.Tensor | None, lora_A: torch.Tensor | None,
    beta: torch.Tensor, scale: float, x_for_dbeta: torch.Tensor | None = None, need_dx: bool = True,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """dx = beta * dy @ W_seed + scale * dy_b @ lora_A and dbeta = <x, dy @ W_seed>.

    dy: (M, out). Returns (dx (M, in) or None, dbeta as a 0-dim tensor or None).
    """
    cdt = _compute_dtype(dy.dtype)
    dy_c = dy.to(cdt)
    dx = new_output((dy.shape[0], spec.in_features), cdt, dy.device) if need_dx else None
    dbeta = torch.zeros((), dtype=cdt, device=dy.device) if x_for_dbeta is not None else None
    for c0, c1 in _column_blocks(spec, block_elements):
        grad_block = dy_c @ _weight_block(spec, (c0, c1), dy.dtype, dy.device)
        if dbeta is not None:
            dbeta += (grad_block * x_for_dbeta[:, c0:c1].to(cdt)).sum()
        if dx is not None:
            dx[:, c0:c1] = grad_block * beta.to(cdt)
    if dx is not None:
        if dy_b is not None:
            dx += (dy_b.to(cdt) @ lora_A.to(cdt)) * scale
        dx = dx.to(dy.dtype)
    return dx, dbeta
