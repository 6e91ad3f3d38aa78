"""The int4 anchor of benchmarks.generate computes what its quantized weight stands for."""

import pytest
import torch

from benchmarks.harness.int4 import Int4WeightOnlyLinear, dequantize, int4_available, quantize
from tests.support.tolerances import assert_close

pytestmark = pytest.mark.skipif(int4_available("cpu") is not None, reason="torch has no CPU int4 kernel")


@pytest.mark.parametrize("in_features,out_features,m", [(256, 80, 1), (384, 144, 17), (128, 16, 3)])
def test_int4_linear_matches_its_dequantized_weight(in_features, out_features, m):
    torch.manual_seed(0)
    linear = torch.nn.Linear(in_features, out_features, dtype=torch.bfloat16)
    layer = Int4WeightOnlyLinear(linear)
    x = torch.randn(2, m, in_features, dtype=torch.bfloat16)
    q, scales_and_zeros = quantize(linear.weight, layer.group_size)
    w = dequantize(q, scales_and_zeros, layer.group_size).double()
    expected = x.double() @ w.T + linear.bias.double()
    assert_close(layer(x), expected, torch.bfloat16)


def test_quantization_error_is_within_half_a_step():
    torch.manual_seed(1)
    w = torch.randn(64, 256)
    q, scales_and_zeros = quantize(w, 128)
    assert q.min() >= 0 and q.max() <= 15
    step = scales_and_zeros[..., 0].float().t().repeat_interleave(128, 1)
    assert ((dequantize(q, scales_and_zeros, 128) - w).abs() <= step * 0.5 + 1e-2 * step + 1e-6).all()


def test_int4_linear_refuses_shapes_the_kernel_cannot_take():
    with pytest.raises(ValueError, match="out_features must be a multiple of 16"):
        Int4WeightOnlyLinear(torch.nn.Linear(128, 72, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="in_features must be a multiple of 128"):
        Int4WeightOnlyLinear(torch.nn.Linear(96, 32, dtype=torch.bfloat16))
