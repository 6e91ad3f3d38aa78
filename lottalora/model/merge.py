"""Export a plain model: every seeded layer folded into an ``nn.Linear`` (PEFT's merge_and_unload).

    W = beta * W_seed + scaling * lora_B @ lora_A          (out_features, in_features)
    W = (m / ||W||_row) * W                                 with DoRA (use_dora=True), as PEFT merges it

For tools that do not know lottalora (transformers' own from_pretrained, ONNX, serving
stacks). The backbone is generated once per layer, in float32, and the sum is rounded once to
the layer's dtype; only one layer's dense weight exists at a time beyond the ones already
written into the model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import Linear, SeededConv, is_dtensor, seeded_layers, unwrap_model
from ..nn.adapters import DEFAULT_ADAPTER
from ..ops.dora import magnitude_scale
from ..ops.precision import accumulation_dtype
from .conv_layers import dense_conv, merged_conv_weight
from .load_check import forget_load_check
from .modules import set_submodule
from .pretrained_class import release_seeded_class
from .records import forget_calls


def merged_weight(layer: Linear) -> torch.Tensor:
    """beta * W_seed + scaling * lora_B @ lora_A of the layer's active adapter (none when it is
    disabled), (out_features, in_features) in the layer's dtype on its device; computed in
    float32 (float64 for a float64 layer). A DoRA default adapter's rows are then rescaled by
    lora_magnitude / (their norm), PEFT's merged DoRA weight."""
    compute = accumulation_dtype(layer.beta.dtype)
    parts = layer.active_adapter_parts()
    with torch.no_grad():
        weight = layer.backbone_weight(dtype=compute) * layer.beta.to(compute)
        if parts is not None:
            weight += parts.scaling * (parts.lora_B.to(compute) @ parts.lora_A.to(compute))
            if layer.use_dora and layer.active_adapter == DEFAULT_ADAPTER:
                weight *= magnitude_scale(layer.lora_magnitude, torch.linalg.vector_norm(weight, dim=1))[:, None]
    return weight.to(layer.beta.dtype)


def _dense_layer(layer: Linear, weight: torch.Tensor) -> nn.Module:
    """nn.Linear (or transformers' Conv1D, for a layer convert made from one) holding ``weight``
    and the layer's bias."""
    if layer.merges_into_conv1d:
        from transformers.pytorch_utils import Conv1D

        with torch.device("meta"):  # no dense weight allocated and initialised only to be replaced
            dense = Conv1D(layer.out_features, layer.in_features)
        dense.weight = nn.Parameter(weight.T.contiguous(), requires_grad=False)
        bias = layer.bias if layer.bias is not None else nn.Parameter(weight.new_zeros(layer.out_features))
        dense.bias = bias
        return dense
    dense = nn.Linear(layer.in_features, layer.out_features, bias=False, device="meta", dtype=weight.dtype)
    dense.weight = nn.Parameter(weight, requires_grad=False)
    dense.bias = layer.bias
    return dense


def merge_and_unload(model: nn.Module, *, safe_merge: bool = False) -> nn.Module:
    """Replace every ``lottalora.Linear`` of ``model`` in place by an ``nn.Linear`` computing the
    same function (``merged_weight``), and every seeded conv by its ``nn.Conv1d`` / ``nn.Conv2d``
    (``merged_conv_weight``: beta * W_seed + the adapter's conv weight), and return ``model``.

    Layers that ``convert`` made from transformers' Conv1D (GPT-2) come back as Conv1D, with the
    merged weight in its (in_features, out_features) layout, so the architecture's own code and
    checkpoints (``save_pretrained`` / ``from_pretrained``) fit again. The merged weight is
    frozen (it stands for a frozen backbone plus adapters; ``requires_grad_(True)`` to train
    it); each bias is the layer's own parameter. Each layer merges its active adapter (PEFT's
    rule; ``set_adapter`` picks it) and its other adapters go with it. The convert records go
    too, and a transformers model gets its own class back: the model is a plain model
    afterwards, whose ``save_pretrained`` is transformers' own. ``safe_merge=True`` (PEFT's
    option) checks each merged weight for NaN and inf before it replaces anything of its layer.
    Sharded layers (FSDP2, tensor parallel) are refused: save the model with lottalora.save,
    load it into an unsharded one, and merge that.
    """
    if not isinstance(safe_merge, bool):
        raise TypeError(f"safe_merge must be a bool, got {safe_merge!r}")
    root = unwrap_model(model)
    layers = list(seeded_layers(root).items())
    if not layers:
        raise ValueError("model has no lottalora.Linear layer to merge")
    for name, layer in layers:
        if layer.shard is not None or any(is_dtensor(p) for p in layer.parameters()):
            raise ValueError(f"layer {name!r} is sharded (FSDP2 or tensor parallel): merge an unsharded copy "
                             "(lottalora.save, then lottalora.load into an unsharded model)")
    for name, layer in layers:
        weight = merged_conv_weight(layer) if isinstance(layer, SeededConv) else merged_weight(layer)
        if safe_merge and not torch.isfinite(weight).all():
            raise ValueError(f"layer {name!r}: the merged weight has NaN or inf values; the layer is left as it was")
        plain = dense_conv(layer, weight) if isinstance(layer, SeededConv) else _dense_layer(layer, weight)
        plain.train(layer.training)
        set_submodule(root, name, plain)
    forget_calls(root)
    release_seeded_class(root)
    for module in root.modules():
        forget_load_check(module)
    return model
