"""Do all ranks hold the same backbones? A rank-dependent seed (``seed=rank``) trains different
random matrices on each rank while DDP averages their gradients as if they were one: nothing
fails, the model is just wrong. ``check_same_backbone`` compares fingerprints across ranks."""

from __future__ import annotations

import hashlib

from torch import nn

from ..backbone import backbone_fingerprint
from ..nn import seeded_layers


class BackboneMismatchError(RuntimeError):
    """Ranks of one process group hold different seeded backbones."""


def backbone_fingerprints(model: nn.Module) -> dict[str, str]:
    """{plain layer name: fingerprint} for every seeded layer: SHA-256 (16 hex digits) of the
    backbone's identity (seed, stream, shape, init, stream version) and of values this build's
    generator draws for it, so a rank with another seed or another generator differs."""
    out = {}
    for name, layer in seeded_layers(model, plain=True).items():
        s = layer.spec
        identity = f"{s.seed}:{s.stream}:{s.out_features}x{s.in_features}:{s.init}:v{s.version}"
        out[name] = hashlib.sha256(f"{identity}:{backbone_fingerprint(s)}".encode()).hexdigest()[:16]
    return out


def _describe(model: nn.Module, name: str) -> str:
    layer = seeded_layers(model, plain=True).get(name)
    if layer is None:
        return "no such seeded layer"
    return f"seed {layer.seed}, stream {layer.stream}, init {layer.init}, stream version {layer.stream_version}"


def check_same_backbone(model: nn.Module, group=None) -> None:
    """Raise ``BackboneMismatchError`` on every rank of ``group`` (default: the whole world)
    when any rank's seeded layers differ from rank 0's: another set of layers, or any layer with
    another seed, stream, shape, init, stream version or generator. A collective: every rank of
    ``group`` calls it (after building or loading the model, before training). Without an
    initialised process group there is nothing to compare and it returns.

    DDP and FSDP2 users call it once after set-up; lottalora's tensor-parallel styles call it on
    each layer they shard.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    mine = backbone_fingerprints(model)
    everyone: list[dict[str, str] | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    reference = everyone[0]
    problems, first = [], None
    for rank, theirs in enumerate(everyone[1:], start=1):
        if theirs == reference:
            continue
        only_0, only_r = sorted(set(reference) - set(theirs)), sorted(set(theirs) - set(reference))
        differing = sorted(n for n in set(reference) & set(theirs) if reference[n] != theirs[n])
        if only_0 or only_r:
            problems.append(f"rank {rank} has other seeded layers (only on rank 0: {only_0[:3]}, only on rank "
                            f"{rank}: {only_r[:3]})")
        first = first or (differing + only_0 + only_r)[0]
        if differing:
            problems.append(f"rank {rank} has another backbone for {len(differing)} layer(s), first "
                            f"{differing[0]!r}")
    if problems:
        here = f"; on this rank (rank {dist.get_rank(group)} of the group) {first!r} has {_describe(model, first)}"
        raise BackboneMismatchError(
            "ranks hold different seeded backbones: " + "; ".join(problems) + here + ". Every rank must build "
            "the model with the same seed and stream version (a seed derived from the rank is a common slip)")
