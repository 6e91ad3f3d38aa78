"""The Triton tile generator against the PyTorch stream: the same bits, whatever the tiling."""

import pytest
import torch

from lottalora import BackboneSpec, backbone_block
from lottalora_kernels import stream_spec as spec
from lottalora_kernels.backbone_gen import generate_backbone


@pytest.mark.parametrize("init", spec.INITS)
@pytest.mark.parametrize("seed,stream", [(0, 0), (2**32 - 1, 2**63 + 1), (2**64 - 1, 2**64 - 1)])
def test_triton_tiles_are_bit_identical_to_the_reference(init, seed, stream, device):
    s = BackboneSpec(seed, stream, 75, 41, init)
    want = backbone_block(s, device=device)
    got = generate_backbone(seed, stream, 75, init, (0, 41), (0, 75), device)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("rows,cols", [((3, 36), (5, 70)), ((40, 41), (74, 75)), ((0, 1), (1, 3)), ((17, 33), (9, 9))])
@pytest.mark.parametrize("block_rows,block_cols", [(16, 16), (32, 64), (64, 128)])
def test_any_block_and_tile_shape_give_the_same_bits(rows, cols, block_rows, block_cols, device):
    s = BackboneSpec(1234, 5, 75, 41, "gaussian")
    want = backbone_block(s, rows=rows, cols=cols, device=device)
    got = generate_backbone(1234, 5, 75, "gaussian", rows, cols, device,
                            block_rows=block_rows, block_cols=block_cols)
    assert torch.equal(got, want)
