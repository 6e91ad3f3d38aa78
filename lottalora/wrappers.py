"""Models as users hand them over, and the plain model and names inside them.

``torch.compile(model)`` returns a wrapper whose parameters are named ``_orig_mod.<name>``, and
``DistributedDataParallel(model)`` one whose parameters are ``module.<name>``; a submodule
compiled in place puts ``_orig_mod.`` in the middle of names. Checkpoints record the plain
names, so a file written from any of these loads into any other and into the bare model.
FSDP2's ``fully_shard`` keeps the names (it changes the module's class in place).
"""

from __future__ import annotations

from torch import nn

_COMPILED_SEGMENT = "_orig_mod"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside torch.compile and DistributedDataParallel wrappers (any nesting)."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        inner = getattr(model, _COMPILED_SEGMENT, None)
        if isinstance(inner, nn.Module) and type(model).__name__ == "OptimizedModule":
            model = inner
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        else:
            return model


def plain_name(name: str) -> str:
    """``name`` without the ``_orig_mod`` segments that torch.compile'd submodules add."""
    if _COMPILED_SEGMENT not in name:
        return name
    return ".".join(part for part in name.split(".") if part != _COMPILED_SEGMENT)
