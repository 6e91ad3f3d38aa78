"""How a model was converted, recorded on the model: every ``convert`` call's arguments and the
layers it converted. ``lottalora.save`` writes the record (docs/checkpoint.md) and
``lottalora.from_pretrained`` replays it, so a rebuilt model saves the same record again.
"""

from __future__ import annotations

import itertools

from torch import nn

from ..nn import plain_name

CONVERT_CALLS_ATTR = "_lottalora_convert_calls"
_call_order = itertools.count()


def record_call(model: nn.Module, converted: list[str], arguments: dict) -> None:
    """Append a convert call to the list kept on ``model``: its arguments (JSON values, seeds as
    decimal strings) and the layers it converted, with an order shared by every model, so calls
    on a model and on its submodules replay in the order they were made."""
    calls = getattr(model, CONVERT_CALLS_ATTR, None)
    if calls is None:
        calls = []
        # A plain attribute, not a buffer: it travels with deepcopy and pickling, never in a state_dict.
        object.__setattr__(model, CONVERT_CALLS_ATTR, calls)
    calls.append({"order": next(_call_order), "arguments": arguments, "converted": sorted(converted)})


def convert_calls(model: nn.Module) -> list[dict]:
    """Every convert call recorded on ``model`` or its submodules, in the order they were made:
    {"module": plain name of the module converted ("" for the root), "arguments", "converted"}."""
    calls = []
    for name, module in model.named_modules():
        for call in module.__dict__.get(CONVERT_CALLS_ATTR, ()):
            calls.append({"module": plain_name(name), **call})
    calls.sort(key=lambda c: c["order"])
    return [{k: v for k, v in c.items() if k != "order"} for c in calls]


def restore_call(owner: nn.Module, call: dict, position: int) -> None:
    """Record a call read back from a file on ``owner``, ordered by its ``position`` among the
    file's calls (before any call made from now on)."""
    recorded = owner.__dict__.setdefault(CONVERT_CALLS_ATTR, [])
    recorded.append({"order": position - 2**62, "arguments": call["arguments"], "converted": call["converted"]})


def forget_calls(model: nn.Module) -> None:
    """Drop every record on ``model`` and its submodules (a merged model is plain torch again)."""
    for module in model.modules():
        module.__dict__.pop(CONVERT_CALLS_ATTR, None)
