"""The torch backend: the seeded linear layer's forward and input gradient in plain PyTorch.

Same contract as the Triton kernels (fp32 accumulation, the same formulas), on any device,
without Triton. The backbone is regenerated in column blocks and dropped after use, so peak
memory stays bounded whatever the layer's size: about 2^20 values per block for stream v1, and
for stream v2 (+-1 signs, one Philox call per 128 values) blocks of whole 128-column spans of
about 2^21 values. Version 2 multiplies by ``beta * std`` once after the product, as the
kernels' epilogue does; version 1's values carry their scale and are rounded to the input dtype
first, as the kernels' tiles are. Float64 inputs are computed in float64 (for gradcheck).
"""

from __future__ import annotations

import torch

from lottalora_kernels.allocation import new_output

from .stream import BackboneSpec, backbone_block, backbone_signs

V1_BLOCK_VALUES = 1 << 20
V2_BLOCK_VALUES = 1 << 21
_V2_SPAN_COLS = 128


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _column_blocks(spec: BackboneSpec):
    if spec.version == 2:
        width = max(_V2_SPAN_COLS, (V2_BLOCK_VALUES // spec.out_features) // _V2_SPAN_COLS * _V2_SPAN_COLS)
    else:
        width = max(4, (V1_BLOCK_VALUES // spec.out_features) // 4 * 4)
    for start in range(0, spec.in_features, width):
        yield start, min(start + width, spec.in_features)


def _weight_block(spec: BackboneSpec, cols: tuple[int, int], dtype: torch.dtype, device) -> torch.Tensor:
    """The block of the matrix the kernels multiply by, in the compute dtype: v2's signs
    (exact), or v1's W_seed[:, cols] rounded to ``dtype`` as the kernels round their tiles."""
    if spec.version == 2:
        return backbone_signs(spec, cols=cols, device=device, dtype=_compute_dtype(dtype))
    return backbone_block(spec, cols=cols, device=device).to(dtype).to(_compute_dtype(dtype))


def _product_scale(spec: BackboneSpec) -> float:
    """What multiplies x @ block^T to give x @ W_seed^T: v2's std (its blocks are signs)."""
    return spec.std if spec.version == 2 else 1.0


def seeded_linear_ref_fwd(
    x: torch.Tensor, spec: BackboneSpec, xa: torch.Tensor | None, lora_B: torch.Tensor | None,
    beta: torch.Tensor, bias: torch.Tensor | None, scale: float,
) -> torch.Tensor:
    """y = beta * x @ W_seed^T + scale * xa @ lora_B^T + bias; x: (M, in), returns (M, out)."""
    cdt = _compute_dtype(x.dtype)
    acc = torch.zeros((x.shape[0], spec.out_features), dtype=cdt, device=x.device)
    for c0, c1 in _column_blocks(spec):
        acc.addmm_(x[:, c0:c1].to(cdt), _weight_block(spec, (c0, c1), x.dtype, x.device).T)
    out = acc * (beta.to(cdt) * _product_scale(spec))
    if xa is not None:
        out = out + (xa.to(cdt) @ lora_B.to(cdt).T) * scale
    if bias is not None:
        out = out + bias.to(cdt)
    return out.to(x.dtype)


def seeded_linear_ref_bwd_dx(
    dy: torch.Tensor, spec: BackboneSpec, dy_b: torch.Tensor | None, lora_A: torch.Tensor | None,
    beta: torch.Tensor, scale: float, x_for_dbeta: torch.Tensor | None = None, need_dx: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """dx = beta * dy @ W_seed + scale * dy_b @ lora_A and dbeta = <x, dy @ W_seed>.

    dy: (M, out). Returns (dx (M, in) or None, dbeta as a 0-dim tensor or None).
    """
    cdt = _compute_dtype(dy.dtype)
    dy_c = dy.to(cdt)
    w_scale = _product_scale(spec)
    dx = new_output((dy.shape[0], spec.in_features), cdt, dy.device) if need_dx else None
    dbeta = torch.zeros((), dtype=cdt, device=dy.device) if x_for_dbeta is not None else None
    for c0, c1 in _column_blocks(spec):
        grad_block = dy_c @ _weight_block(spec, (c0, c1), dy.dtype, dy.device)
        if dbeta is not None:
            dbeta += (grad_block * x_for_dbeta[:, c0:c1].to(cdt)).sum()
        if dx is not None:
            torch.mul(grad_block, beta.to(cdt) * w_scale, out=dx[:, c0:c1])
    if dbeta is not None:
        dbeta *= w_scale
    if dx is not None:
        if dy_b is not None:
            dx += (dy_b.to(cdt) @ lora_A.to(cdt)) * scale
        dx = dx.to(dy.dtype)
    return dx, dbeta
