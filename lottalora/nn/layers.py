"""Finding a model's seeded layers: the one walk every model tool, checkpoint and distributed
helper uses, and the plain model and names inside the wrappers users hand over.

``torch.compile(model)`` returns a wrapper whose parameters are named ``_orig_mod.<name>``, and
``DistributedDataParallel(model)`` one whose parameters are ``module.<name>``; a submodule
compiled in place puts ``_orig_mod.`` in the middle of names. Checkpoints record the plain
names, so a file written from any of these loads into any other and into the bare model.
FSDP2's ``fully_shard`` keeps the names (it changes the module's class in place).
"""

from __future__ import annotations

import sys

from torch import nn

from .conv import SeededConv
from .linear import Linear

_COMPILED_SEGMENT = "_orig_mod"
# Every kind of seeded layer: the one list the model tools, checkpoints and reseed walk.
SEEDED_LAYER_TYPES = (Linear, SeededConv)


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


def seeded_layers(model: nn.Module, *, plain: bool = False,
                  every_place: bool = False) -> dict[str, Linear | SeededConv]:
    """{qualified name: layer} for every seeded layer of ``model`` (unwrapped from torch.compile
    and DDP first), in ``named_modules`` order; "" names ``model`` itself when it is one. A layer
    shared under two names appears once, under the first, unless ``every_place``: then under each
    (each place has its own state_dict entries). ``plain``: names without the ``_orig_mod``
    segments of submodules compiled in place (what checkpoints record)."""
    modules = unwrap_model(model).named_modules(remove_duplicate=not every_place)
    layers = {name: m for name, m in modules if isinstance(m, SEEDED_LAYER_TYPES)}
    return {plain_name(name): m for name, m in layers.items()} if plain else layers


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a DTensor (FSDP2, tensor parallel), without importing
    torch.distributed.tensor when nothing has."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)
