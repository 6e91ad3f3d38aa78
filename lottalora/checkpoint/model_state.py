"""A model's state as checkpoints see it: plain names (whatever wraps the model), the tensors a
checkpoint can hold, and which parameters train."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import SeededConv, plain_name


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """{plain name: state_dict tensor} for every tensor a checkpoint can hold (not the extra states)."""
    return {plain_name(k): v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def trainable_names(model: nn.Module) -> list[str]:
    """Plain names of the parameters that require grad, tied names included."""
    return sorted({plain_name(n) for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad})


def conv_weight_shape(module: nn.Module) -> list[int] | None:
    """A seeded conv's weight shape [out, in // groups, *kernel_size] as checkpoints record it
    (the layer entry's ``weight_shape``); None for a seeded Linear."""
    return list(module.geometry.weight_shape(module.out_channels)) if isinstance(module, SeededConv) else None
