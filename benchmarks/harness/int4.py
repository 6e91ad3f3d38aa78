"""The int4 weight-only anchor: linear layers with group-wise 4-bit weights, multiplied by torch's
own int4 kernel (``torch._weight_int4pack_mm``, the one gpt-fast and torchao's int4 weight-only
path call on CUDA; ``_weight_int4pack_mm_for_cpu`` on the CPU).

Quantization as torchao's affine scheme with a float zero point: per group of ``group_size``
input columns, scale = (max - min) / 15 and zero = min + 8 scale, q = round((w - min) / scale)
in [0, 15], dequantized as (q - 8) scale + zero.
"""

from __future__ import annotations

import torch
from torch import nn

INNER_K_TILES = 8
GROUP_SIZES = (128, 64, 32)


def int4_available(device: torch.device | str) -> str | None:
    """None where torch's int4 kernel runs on ``device`` for bf16 inputs, else why not."""
    device = torch.device(device)
    if device.type == "cuda":
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
            return f"torch {torch.__version__} has no _weight_int4pack_mm"
        if torch.cuda.get_device_capability(device)[0] < 8:
            return "torch's int4 kernel needs sm_80 or later"
        return None
    if device.type == "cpu":
        return None if hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") else (
            f"torch {torch.__version__} has no _weight_int4pack_mm_for_cpu")
    return f"no int4 kernel for {device.type}"


def group_size_for(in_features: int) -> int:
    """The largest supported group that divides ``in_features``."""
    for g in GROUP_SIZES:
        if in_features % g == 0 and in_features % (INNER_K_TILES * 16) == 0:
            return g
    raise ValueError(f"in_features must be a multiple of {INNER_K_TILES * 16} for the int4 kernel, got {in_features}")


def check_int4_shape(in_features: int, out_features: int) -> None:
    """Raise ValueError unless torch's int4 kernels take an (out_features, in_features) weight."""
    group_size_for(in_features)
    if out_features % 16:
        raise ValueError(f"out_features must be a multiple of 16 for the int4 kernel, got {out_features}")


def quantize(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scales_and_zeros): q int32 (N, K) in [0, 15]; scales_and_zeros bf16 (K / group, N, 2)."""
    n, k = weight.shape
    groups = weight.float().reshape(n, k // group_size, group_size)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = ((high - low).clamp(min=1e-6) / 15).to(torch.bfloat16)
    zero = (low + scale.float() * 8).to(torch.bfloat16)
    low = zero.float() - scale.float() * 8  # the grid the rounded scale and zero describe
    q = ((groups - low) / scale.float()).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    scales_and_zeros = torch.cat([scale, zero], -1).permute(1, 0, 2).contiguous()
    return q, scales_and_zeros


def dequantize(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """The float32 weight (N, K) that ``quantize``'s output stands for."""
    scale = scales_and_zeros[..., 0].float().t().repeat_interleave(group_size, 1)
    zero = scales_and_zeros[..., 1].float().t().repeat_interleave(group_size, 1)
    return (q.float() - 8) * scale + zero


class Int4WeightOnlyLinear(nn.Module):
    """y = x @ dequantize(W)^T + bias, x bf16 (*, in_features), with the 4-bit weight packed for
    torch's int4 kernel on the weight's device."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        check_int4_shape(linear.in_features, linear.out_features)
        self.group_size = group_size_for(linear.in_features)
        weight = linear.weight.detach()
        q, scales_and_zeros = quantize(weight, self.group_size)
        if weight.is_cuda:
            packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8),
                                                                INNER_K_TILES)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, INNER_K_TILES)
        self.register_buffer("packed_weight", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                  requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, self.in_features).to(torch.bfloat16)
        mm = torch.ops.aten._weight_int4pack_mm if x.is_cuda else torch.ops.aten._weight_int4pack_mm_for_cpu
        y = mm(x2d, self.packed_weight, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


def quantize_linears(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """Every ``nn.Linear`` of ``model`` but those named in ``skip`` replaced in place by an
    ``Int4WeightOnlyLinear``, one at a time (the stored weight is freed as its layer is done)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.rpartition(".")[2] not in skip:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, Int4WeightOnlyLinear(module))
    return model
