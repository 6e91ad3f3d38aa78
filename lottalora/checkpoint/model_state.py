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


def state_key(place: str, entry: str) -> str:
    """The state_dict name of ``entry`` of the module at ``place`` ("" names the model itself)."""
    return f"{place}.{entry}" if place else entry


def state_tensors(model: nn.Module, keep_vars: bool = False) -> dict[str, torch.Tensor]:
    """{plain name: state_dict tensor} for every tensor a checkpoint can hold (not the extra
    states, nor the dense guards a state dict taken for transformers holds)."""
    guards = {state_key(place, DENSE_GUARD_ENTRY) for place in seeded_layers(model, plain=True, every_place=True)}
    state = {plain_name(k): v for k, v in model.state_dict(keep_vars=keep_vars).items()
             if not k.endswith("_extra_state")}
    return {k: v for k, v in state.items() if k not in guards}


def _held_shape(t: torch.Tensor) -> torch.Size:
    """The whole shape of a model's tensor: a DTensor's global one, and under DeepSpeed ZeRO-3,
    whose parameters are empty placeholders on every rank, the one it records (``ds_shape``)."""
    return torch.Size(getattr(t, "ds_shape", t.shape))


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def given_state_tensors(model: nn.Module, state_dict: Mapping) -> dict[str, torch.Tensor]:
    """{plain name: tensor} of ``state_dict``, a state dict of ``model`` taken elsewhere (by the
    Trainer under FSDP's full state dict or DeepSpeed, of a compiled or DDP wrapper), checked
    against the model's own (``state_tensors``): the same names, each a whole tensor of the same
    shape and dtype, and each seeded layer's extra state, where it holds one, this layer's (the
    backbone's identity, rank and alpha: a state dict of another model of the same shapes would
    otherwise be saved under this one's seeds). The extra states and dense guards are left out of
    the result (a writer takes the layers' states from the layers). Raises ValueError naming the
    first names that differ."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    own, places = state_tensors(model, keep_vars=True), seeded_layers(model, plain=True, every_place=True)
    guards = {state_key(place, DENSE_GUARD_ENTRY) for place in places}
    states = {state_key(place, "_extra_state"): layer.get_extra_state() for place, layer in places.items()}
    states.update({state_key(place, f"lora_adapters.{name}._extra_state"): adapter.get_extra_state()
                   for place, layer in places.items() for name, adapter in layer.named_adapters.items()})
    names = [plain_name(k) for k in state_dict]
    if names and all(n.startswith(_DDP_PREFIX) for n in names) and not any(n.startswith(_DDP_PREFIX) for n in own):
        names = [n[len(_DDP_PREFIX):] for n in names]
    given = {}
    for name, value in zip(names, state_dict.values()):
        if name in states and isinstance(value, torch.Tensor):
            held = states[name]
            if value.is_meta or value.dtype != held.dtype or value.shape != held.shape:
                raise ValueError(f"state_dict[{name!r}] is {value.dtype} {tuple(value.shape)} on {value.device}: a "
                                 f"layer's extra state is {held.dtype} {tuple(held.shape)} words, with values")
            if not torch.equal(value.cpu(), held):
                raise ValueError(f"state_dict[{name!r}] describes another backbone or adapter than the model's layer "
                                 "there (its seed, stream, rank or alpha differ): it is a state dict of another model")
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
        if value.shape != _held_shape(want) or value.dtype != want.dtype:
            raise ValueError(f"state_dict[{name!r}] is {value.dtype} {tuple(value.shape)} where the model's is "
                             f"{want.dtype} {tuple(_held_shape(want))}")
    return given


def trainable_names(model: nn.Module) -> list[str]:
    """Plain names of the parameters that require grad, tied names included."""
    return sorted({plain_name(n) for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad})


def conv_weight_shape(module: nn.Module) -> list[int] | None:
    """A seeded conv's weight shape [out, in // groups, *kernel_size] as checkpoints record it
    (the layer entry's ``weight_shape``); None for a seeded Linear."""
    return list(module.dense_weight_shape) if isinstance(module, SeededConv) else None
