"""A model's state as checkpoints see it: plain names (whatever wraps the model), the tensors a
checkpoint can hold, and which parameters train."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..nn import SeededConv, is_dtensor, plain_name, seeded_layers
from ..nn.dense_guard import ENTRY as DENSE_GUARD_ENTRY

# The prefix DistributedDataParallel's own state_dict puts before every name.
_DDP_PREFIX = "module."


def _dense_guard_names(model: nn.Module) -> set[str]:
    """Where a state dict taken for transformers holds the dense guard: each seeded layer's ``weight``."""
    return {f"{name}.{DENSE_GUARD_ENTRY}" if name else DENSE_GUARD_ENTRY for name in seeded_layers(model, plain=True)}


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """{plain name: state_dict tensor} for every tensor a checkpoint can hold (not the extra
    states, nor the dense guards a state dict taken for transformers holds)."""
    guards = _dense_guard_names(model)
    state = {plain_name(k): v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    return {k: v for k, v in state.items() if k not in guards}


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def given_state_tensors(model: nn.Module, state_dict: Mapping) -> dict[str, torch.Tensor]:
    """{plain name: tensor} of ``state_dict``, a state dict of ``model`` taken elsewhere (by the
    Trainer under FSDP's full state dict or DeepSpeed, of a compiled or DDP wrapper), checked
    against the model's own (``state_tensors``): the same names, each a whole tensor of the same
    shape and dtype. Its extra states and dense guards are left out (a writer takes the layers'
    states from the layers). Raises ValueError naming the first names that differ."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    own, guards = state_tensors(model), _dense_guard_names(model)
    names = [plain_name(k) for k in state_dict]
    if names and all(n.startswith(_DDP_PREFIX) for n in names) and not any(n.startswith(_DDP_PREFIX) for n in own):
        names = [n[len(_DDP_PREFIX):] for n in names]
    given = {}
    for name, value in zip(names, state_dict.values()):
        if name.endswith("_extra_state") or (name in guards and isinstance(value, torch.Tensor) and value.numel() == 0):
            continue
        given[name] = value
    missing, unexpected = sorted(own.keys() - given.keys()), sorted(given.keys() - own.keys())
    if missing or unexpected:
        said = [f"lacks {len(missing)} of the model's tensors ({_some(missing)})" if missing else "",
                f"holds {len(unexpected)} the model does not ({_some(unexpected)})" if unexpected else ""]
        raise ValueError(f"state_dict is not a state dict of this model: it {' and '.join(s for s in said if s)}")
    for name in sorted(own):
        value, want = given[name], own[name]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state_dict[{name!r}] is a {type(value).__name__}, not a tensor")
        if is_dtensor(value):
            raise ValueError(f"state_dict[{name!r}] is a sharded DTensor: give whole tensors (FSDP's full state dict, "
                             "as the Trainer takes it), or call lottalora.save on every rank")
        if value.is_meta:
            raise ValueError(f"state_dict[{name!r}] is on the meta device: it holds no values to save")
        if value.shape != want.shape or value.dtype != want.dtype:
            raise ValueError(f"state_dict[{name!r}] is {value.dtype} {tuple(value.shape)} where the model's is "
                             f"{want.dtype} {tuple(want.shape)}")
    return given


def trainable_names(model: nn.Module) -> list[str]:
    """Plain names of the parameters that require grad, tied names included."""
    return sorted({plain_name(n) for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad})


def conv_weight_shape(module: nn.Module) -> list[int] | None:
    """A seeded conv's weight shape [out, in // groups, *kernel_size] as checkpoints record it
    (the layer entry's ``weight_shape``); None for a seeded Linear."""
    return list(module.geometry.weight_shape(module.out_channels)) if isinstance(module, SeededConv) else None
