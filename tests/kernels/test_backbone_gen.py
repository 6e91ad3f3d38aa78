"""The Triton generators against the PyTorch stream: the same bits, whatever the block."""

import pytest
import torch

from lottalora import BackboneSpec, backbone_block
from lottalora.backbone import backbone_signs
from lottalora_kernels.backbone_gen import generate_backbone
from lottalora_kernels.stream import spec

VERSION_INITS = [(1, init) for init in spec.VERSION_INITS[1]] + [(2, init) for init in spec.VERSION_INITS[2]]


@pytest.mark.parametrize("version,init", VERSION_INITS)
@pytest.mark.parametrize("seed,stream", [(0, 0), (2**32 - 1, 2**63 + 1), (2**64 - 1, 2**64 - 1)])
def test_triton_tiles_are_bit_identical_to_the_reference(version, init, seed, stream, device):
    s = BackboneSpec(seed, stream, 75, 41, init, version)
    want = backbone_block(s, device=device)
    got = generate_backbone(seed, stream, 75, init, (0, 41), (0, 75), device, version=version)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("rows,cols", [((3, 36), (5, 70)), ((40, 41), (74, 75)), ((0, 1), (1, 3)), ((17, 33), (9, 9))])
def test_v1_any_block_gives_the_same_bits(rows, cols, device):
    s = BackboneSpec(1234, 5, 75, 41, "gaussian")
    want = backbone_block(s, rows=rows, cols=cols, device=device)
    got = generate_backbone(1234, 5, 75, "gaussian", rows, cols, device)
    assert torch.equal(got, want)


@pytest.mark.parametrize("rows,cols", [((0, 130), (0, 300)), ((63, 130), (127, 260)), ((64, 65), (256, 257)),
                                       ((5, 9), (3, 3))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_v2_any_block_and_dtype_give_the_reference_signs(rows, cols, dtype, device):
    s = BackboneSpec(2**64 - 5, 2**33 + 1, 300, 130)
    want = backbone_signs(s, rows=rows, cols=cols, device=device, dtype=dtype)
    got = generate_backbone(s.seed, s.stream, 300, s.init, rows, cols, device, version=2, dtype=dtype, signs=True)
    assert got.dtype == dtype and torch.equal(got, want)
    strided = torch.full((cols[1] - cols[0], rows[1] - rows[0]), float("nan"), dtype=dtype, device=device).T
    generate_backbone(s.seed, s.stream, 300, s.init, rows, cols, device, version=2, dtype=dtype, signs=True,
                      out=strided)
    assert torch.equal(strided, want)
