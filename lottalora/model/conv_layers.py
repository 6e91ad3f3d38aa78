"""Dense convolutions and seeded ones, both ways: which ``nn.Conv1d`` / ``nn.Conv2d`` convert,
the seeded conv that replaces one (its geometry kept), and the dense conv a seeded one merges
into (``merge_and_unload``)."""

from __future__ import annotations

import torch
from torch import nn

from ..backbone import BackboneSpec
from ..nn import Conv1d, Conv2d, SeededConv
from ..ops.dora import magnitude_scale
from ..ops.precision import accumulation_dtype

_SEEDED = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d}
_DENSE = {Conv1d: nn.Conv1d, Conv2d: nn.Conv2d}


def is_dense_conv(module: nn.Module) -> bool:
    """Whether ``module`` is an nn.Conv1d / nn.Conv2d (exactly, not a subclass that may change
    its forward), the convolutions ``convert`` can seed."""
    return type(module) in _SEEDED


def conv_matrix_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a dense conv's weight as a matrix: (in_channels // groups *
    prod(kernel_size), out_channels), the backbone a seeded conv of it holds."""
    weight_shape = module.weight.shape
    return int(torch.Size(weight_shape[1:]).numel()), int(weight_shape[0])


def seeded_conv_like(module: nn.Module, spec: BackboneSpec, *, dtype: torch.dtype | None = None,
                     device=None, **options) -> SeededConv:
    """The seeded conv with ``module``'s channels, kernel, stride, padding, dilation, groups,
    bias (not copied) and padding_mode, and ``spec``'s backbone; ``options`` as
    ``lottalora.Conv2d`` takes them (rank, alpha, ...). ValueError unless ``spec`` is the
    conv's matrix shape."""
    if (spec.in_features, spec.out_features) != conv_matrix_shape(module):
        raise ValueError(f"{type(module).__name__} has a {conv_matrix_shape(module)[::-1]} weight matrix, the "
                         f"backbone is {spec.out_features} x {spec.in_features}")
    weight = module.weight
    return _SEEDED[type(module)](
        module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
        module.dilation, module.groups, module.bias is not None, module.padding_mode, seed=spec.seed,
        stream=spec.stream, init=spec.init, stream_version=spec.version,
        device=device if device is not None else weight.device, dtype=dtype if dtype is not None else weight.dtype,
        **options)


def merged_conv_weight(layer: SeededConv) -> torch.Tensor:
    """beta * W_seed + the active default adapter's delta_weight() (none when adapters are
    disabled), (out_channels, in_channels // groups, *kernel_size) in the layer's dtype;
    computed in float32 (float64 for a float64 layer). A DoRA layer's output channels are then
    rescaled by lora_magnitude / (the channel's norm over in_channels // groups and the kernel),
    PEFT's merged DoRA conv weight."""
    compute = accumulation_dtype(layer.beta.dtype)
    with torch.no_grad():
        weight = layer.backbone_weight(dtype=compute) * layer.beta.to(compute)
        if layer.active_adapter is not None and layer.rank > 0:
            weight += layer.delta_weight().to(compute)
            if layer.use_dora:
                norms = torch.linalg.vector_norm(weight.flatten(1), dim=1)
                weight *= magnitude_scale(layer.lora_magnitude, norms).view(-1, *(1,) * (weight.dim() - 1))
    return weight.to(layer.beta.dtype)


def dense_conv(layer: SeededConv, weight: torch.Tensor) -> nn.Module:
    """The nn.Conv1d / nn.Conv2d of the layer's geometry holding ``weight`` (frozen) and the
    layer's own bias."""
    with torch.device("meta"):  # nothing allocated only to be replaced
        dense = _DENSE[type(layer)](layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                    layer.padding, layer.dilation, layer.groups, bias=False,
                                    padding_mode=layer.padding_mode, dtype=weight.dtype)
    dense.weight = nn.Parameter(weight, requires_grad=False)
    dense.bias = layer.bias
    return dense
