"""What a training step communicates: ``CollectiveCounter`` records every c10d collective run
while it is active, with the bytes it moves.

    with CollectiveCounter() as counter:
        model(ids, labels=ids).loss.backward()
    counter.total("all_gather"), counter.total("reduce_scatter")

The check that a seeded model's backbones are never communicated (FSDP2 gathers parameters, and
a backbone is none): only the adapters, embeddings, norms and heads appear. The mode sees the
collectives dispatched on the thread that runs it (FSDP2's backward runs some on others).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ALL_GATHERS = {"_allgather_base_", "allgather_", "allgather_into_tensor_coalesced_"}
_REDUCE_SCATTERS = {"_reduce_scatter_base_", "reduce_scatter_", "reduce_scatter_tensor_coalesced_"}


def _tensor_bytes(value) -> int:
    leaves = torch.utils._pytree.tree_leaves(value)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


class CollectiveCounter(TorchDispatchMode):
    """Counts the c10d collectives run while active: ``ops`` lists (kind, op name, bytes, numel)
    with kind "all_gather" (bytes of the output), "reduce_scatter" (bytes of the input) or
    "other" (bytes of every tensor argument)."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, str, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "c10d":
            name = func._opname
            if name in _ALL_GATHERS:
                kind, side = "all_gather", args[0]
            elif name in _REDUCE_SCATTERS:
                kind, side = "reduce_scatter", args[1]
            else:
                kind, side = "other", (args, kwargs)
            numel = sum(t.numel() for t in torch.utils._pytree.tree_leaves(side) if isinstance(t, torch.Tensor))
            self.ops.append((kind, name, _tensor_bytes(side), numel))
        return func(*args, **kwargs)

    def total(self, kind: str) -> int:
        """Bytes moved by the collectives of ``kind`` ("all_gather", "reduce_scatter", "other")."""
        return sum(b for k, _, b, _ in self.ops if k == kind)
