"""The dense guard: an empty tensor under each seeded layer's dense weight name, in every checkpoint
transformers writes or reads of a model that holds seeded layers.

A seeded layer has no ``weight``: it has a seed. A checkpoint of its tensors alone (lora_A,
lora_B, beta, bias, "_extra_state") is one that transformers' ``from_pretrained`` of the dense
architecture would take without an error, leaving each backbone weight missing, i.e. filled
with fresh random values, and only logging it. So wherever transformers is the writer, the
checkpoint also holds ``<layer>.weight`` as an empty 1-D float32 tensor: a dense class then
finds every backbone weight the wrong size and refuses to load (transformers' size-mismatch
error), while a seeded layer drops the entry when it loads (``drop_dense_guard``), so the same
files resume a Trainer run exactly.

Where transformers is the writer:
- lottalora's own ``save_pretrained`` (a converted model's) writes the guards into the files the
  Trainer reads (``lottalora.checkpoint.save_pretrained``);
- transformers' ``PreTrainedModel.save_pretrained`` of a model that holds seeded layers without
  being converted as a whole (a submodule converted alone, a model of one's own class, a seeded
  model inside another) takes ``model.state_dict()``; while it does, each seeded layer adds its
  guard to that state dict (``guard_transformers_checkpoint``) and the first one warns. A class
  that builds its seeded layers in ``__init__`` still loads such a checkpoint through
  transformers, which reports the guards as unexpected keys;
- transformers' ``load_sharded_checkpoint`` (the Trainer's resume from an index) compares the
  index's keys with ``model.state_dict()``'s before loading; the guards the index lists appear
  there too, so they are expected keys, and an index written before the guards expects none.
transformers offers no hook at either place; its function's frame on the stack is the one sure
sign that a state dict is being taken for it. Every other ``state_dict`` (``torch.save``, FSDP2,
DCP, lottalora's writers) holds no guard.
"""

from __future__ import annotations

import sys
import warnings

import torch

ENTRY = "weight"

# (module, qualified name of a function) whose frame marks a state dict taken for a transformers
# checkpoint: the writer, and the Trainer's sharded reader (transformers 5 and 4.x places).
_CHECKPOINT_FUNCTIONS = (
    ("transformers.modeling_utils", "PreTrainedModel.save_pretrained"),
    ("transformers.trainer_utils", "load_sharded_checkpoint"),
    ("transformers.modeling_utils", "load_sharded_checkpoint"),
)
_WRITER = _CHECKPOINT_FUNCTIONS[0]


def dense_guard() -> torch.Tensor:
    """The entry written under a seeded layer's ``weight``: empty, 1-D, float32, on the CPU."""
    return torch.empty(0, dtype=torch.float32, device="cpu")


def drop_dense_guard(state: dict, prefix: str) -> None:
    """Remove ``state[prefix + "weight"]`` when it is the dense guard (an empty 1-D tensor), so a
    seeded layer loads a guarded checkpoint without an unexpected key; a real weight stays, and
    stays unexpected."""
    entry = state.get(prefix + ENTRY)
    if isinstance(entry, torch.Tensor) and entry.dim() == 1 and entry.numel() == 0:
        del state[prefix + ENTRY]


def _code(module_name: str, qualname: str):
    target = sys.modules.get(module_name)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return getattr(target, "__code__", None)


def _transformers_checkpoint_frame():
    """(which function, its frame) of the innermost transformers checkpoint function on this
    thread's stack, or None."""
    if "transformers" not in sys.modules:
        return None
    codes = {}
    for place in _CHECKPOINT_FUNCTIONS:
        code = _code(*place)
        if code is not None:
            codes[code] = place
    if not codes:
        return None
    frame = sys._getframe(2)
    while frame is not None:
        place = codes.get(frame.f_code)
        if place is not None:
            return place, frame
        frame = frame.f_back
    return None


def _index_keys(frame):
    """The keys of the index ``load_sharded_checkpoint`` is reading, or None if it cannot be told."""
    keys = frame.f_locals.get("loaded_keys")
    if keys is None:
        index = frame.f_locals.get("index")
        keys = index.get("weight_map") if isinstance(index, dict) else None
    return keys


def _caller_level(frame) -> int:
    """The ``stacklevel`` that points a warning issued here at the code calling ``frame``'s function."""
    level, current = 1, sys._getframe(1)
    while current is not None and current is not frame:
        level, current = level + 1, current.f_back
    return level + 1


def guard_transformers_checkpoint(destination: dict, prefix: str) -> None:
    """Add the dense guard under ``prefix + "weight"`` to a seeded layer's state dict when it is
    taken for a transformers checkpoint (the module docstring). For the Trainer's reader, only
    where the index lists it (an index written before the guards existed expects none); when
    transformers' own save_pretrained writes it, warn once per state dict, at its caller."""
    found = _transformers_checkpoint_frame()
    if found is None:
        return
    place, frame = found
    if place != _WRITER:
        keys = _index_keys(frame)
        if keys is not None and prefix + ENTRY not in keys:
            return
    destination[prefix + ENTRY] = dense_guard()
    if place != _WRITER or getattr(destination, "_lottalora_guard_warned", False):
        return
    destination._lottalora_guard_warned = True
    name = type(frame.f_locals.get("self")).__name__
    warnings.warn(
        f"{name}.save_pretrained is transformers' own: the model holds seeded layers but was not converted as a "
        "whole (a submodule converted alone, a model placed in another, or a class of your own), so it writes a "
        "plain transformers checkpoint with an empty tensor in place of each seeded layer's dense weight. The "
        "Trainer resumes from it, and a class that builds the seeded layers itself loads it; a dense class's "
        "from_pretrained refuses it (a size mismatch) rather than loading random weights there. For a directory "
        f"that from_pretrained rebuilds, convert the whole {name} when you build it, or write it with "
        "lottalora.save(model, directory)", UserWarning, stacklevel=_caller_level(frame))
