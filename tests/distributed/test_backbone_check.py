"""check_same_backbone on 2 CPU ranks (gloo): the rank-dependent seed that DDP would train
silently is caught on every rank. Functions starting with _ run on every rank."""

import pytest
import torch
from torch import nn

import lottalora
from tests.distributed.launch import run_ranks


def _mlp(seed, stream_version=None):
    return nn.Sequential(lottalora.Linear(8, 16, rank=2, seed=seed, stream=0, stream_version=stream_version),
                         nn.ReLU(), lottalora.Linear(16, 4, rank=2, seed=7, stream=1))


def _ddp_ranks_with_different_backbones_are_caught(rank, world, directory):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lottalora.distributed import backbone_fingerprints, check_same_backbone
    from lottalora.distributed.backbone_check import BackboneMismatchError

    slip = DistributedDataParallel(_mlp(seed=rank))  # the slip: seed=rank
    with pytest.raises(BackboneMismatchError, match=rf"rank 1 has another backbone for 1 layer\(s\), first '0'; "
                                                    rf"on this rank \(rank {rank} of the group\) '0' has seed {rank}"):
        check_same_backbone(slip)
    with pytest.raises(BackboneMismatchError, match="rank 1 has another backbone"):
        check_same_backbone(_mlp(seed=3, stream_version=1 if rank else 2))
    with pytest.raises(BackboneMismatchError, match="rank 1 has other seeded layers"):
        check_same_backbone(_mlp(seed=3) if rank == 0 else nn.Sequential(_mlp(seed=3)))

    torch.manual_seed(0)
    same = DistributedDataParallel(_mlp(seed=3))
    check_same_backbone(same)  # passes on both ranks
    assert list(backbone_fingerprints(same)) == ["0", "2"]
    if rank == 0:  # the DDP habit: only rank 0 saves; no collective is involved
        lottalora.save(same, directory)
    dist.barrier()
    fresh = _mlp(seed=9)
    lottalora.load(fresh, directory)  # plain names: the DDP wrapper's "module." is not in the file
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), same.module(x))


def test_check_same_backbone_raises_on_every_rank_when_any_rank_differs(tmp_path):
    run_ranks("tests.distributed.test_backbone_check:_ddp_ranks_with_different_backbones_are_caught",
              args=[str(tmp_path / "ck")])


def test_check_same_backbone_without_a_process_group_has_nothing_to_compare():
    from lottalora.distributed import check_same_backbone

    check_same_backbone(_mlp(seed=0))
