"""Whole tensors from sharded ones and back: what ``lottalora.save`` and ``lottalora.load`` do
with models whose parameters are DTensors (FSDP2's ``fully_shard``, tensor parallel).

A checkpoint always holds whole tensors under their plain names, so one written by a sharded
model loads into an unsharded one and the other way round. Gathering is a collective: every rank
of the model's meshes calls ``save``; rank 0 of the default process group writes the files.
Loading needs no collective: every rank reads the files and keeps its own shard.
"""

from __future__ import annotations

import torch

from ..nn import is_dtensor


def is_writer() -> bool:
    """Whether this process writes files: rank 0 of the default group, or a lone process."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank of the default group (nothing to wait for without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_full(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Each DTensor of ``tensors`` as the whole tensor on the CPU, plain tensors as they are.

    A collective over each DTensor's mesh, one tensor at a time: only the writer keeps the
    gathered values (the others drop each as soon as it is gathered), so no rank ever holds
    more than one whole tensor it does not write. Returns None on ranks that do not write.
    """
    writer = is_writer()
    out = {}
    for name, t in tensors.items():
        if is_dtensor(t):
            full = t.full_tensor()
            if writer:
                out[name] = full.detach().cpu()
            del full
        elif writer:
            out[name] = t
    return out if writer else None


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor, the same on every rank) laid out as the DTensor ``like``:
    each rank keeps its own shard, with no communication."""
    from torch.distributed.tensor import distribute_tensor

    local = value.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(local, like.device_mesh, like.placements, src_data_rank=None)
