"""lottalora across processes: tensor-parallel styles for seeded layers and a backbone check.

    from lottalora.distributed import ColwiseParallel, RowwiseParallel, check_same_backbone
    parallelize_module(model, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
    check_same_backbone(model)   # after DDP / FSDP2 set-up: raises on every rank if any differs

FSDP2 needs nothing from here: ``torch.distributed.fsdp.fully_shard`` takes a converted model
as it is, and ``lottalora.save`` / ``load`` handle its sharded parameters (``state``).
``CollectiveCounter`` shows what a step communicates; ``local_ranks`` runs code on several local
processes (gloo). The names are imported on first use, so importing lottalora never imports
torch.distributed.tensor.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ColwiseParallel": "tensor_parallel",
    "RowwiseParallel": "tensor_parallel",
    "TensorParallelLinear": "tensor_parallel",
    "check_same_backbone": "backbone_check",
    "BackboneMismatchError": "backbone_check",
    "backbone_fingerprints": "backbone_check",
    "CollectiveCounter": "collectives",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__():
    return sorted(list(globals()) + __all__)
