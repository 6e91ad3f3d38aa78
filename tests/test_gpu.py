"""Checks that only mean something on a real GPU: compiled kernels, autotuned configs, and
bit-exactness of the compiled generator against the CPU reference. Skipped without CUDA."""

import pytest
import torch

import lottalora
from lottalora_kernels import stream_spec as spec
from lottalora_kernels.backbone_gen import generate_backbone

from .helpers import assert_close_to_baseline

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("init", spec.INITS)
def test_compiled_generator_is_bit_identical_to_the_cpu_reference(init):
    s = lottalora.BackboneSpec(2**64 - 7, 2**40 + 9, 3001, 1037, init)
    cpu = lottalora.backbone_block(s)
    gpu = generate_backbone(s.seed, s.stream, 3001, init, (0, 1037), (0, 3001), "cuda").cpu()
    mismatches = (gpu.view(torch.int32) != cpu.view(torch.int32)).sum().item()
    assert mismatches == 0, f"{mismatches} of {cpu.numel()} values differ"
    torch_on_gpu = lottalora.backbone_block(s, device="cuda").cpu()
    assert torch.equal(torch_on_gpu.view(torch.int32), cpu.view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 16, 300, 2049])
def test_autotuned_forward_and_backward_match_float64(dtype, M, monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    K, N = 1000, 777
    layer = lottalora.Linear(K, N, rank=16, seed=5, device="cuda", dtype=dtype)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.1)
        layer.beta.fill_(0.9)
    x = torch.randn(M, K, device="cuda", dtype=dtype, requires_grad=True)
    y = layer(x)
    dy = torch.randn_like(y)
    y.backward(dy)

    w = layer.backbone_weight(dtype=dtype)
    def formula(cast):
        leaves = [t.detach().to(cast).requires_grad_() for t in (x, layer.lora_A, layer.lora_B, layer.beta, layer.bias)]
        xx, A, B, beta, bias = leaves
        out = beta * xx @ w.to(cast).T + layer.scaling * (xx @ A.T) @ B.T + bias
        out.backward(dy.to(cast))
        return out, [t.grad for t in leaves]
    want_y, want_g = formula(torch.float64)
    base_y, base_g = formula(dtype)
    assert_close_to_baseline(y, base_y, want_y, dtype, f"y {dtype} M={M}")
    got_g = [x.grad, layer.lora_A.grad, layer.lora_B.grad, layer.beta.grad, layer.bias.grad]
    for name, g, b, w_ in zip(["x", "A", "B", "beta", "bias"], got_g, base_g, want_g, strict=True):
        assert_close_to_baseline(g, b, w_, dtype, f"d{name} {dtype} M={M}")


def test_large_index_space_does_not_overflow():
    """Rows past 2^16 and an x with over 2^31 / K rows: offsets are int64."""
    K, N = 64, 70000
    layer = lottalora.Linear(K, N, rank=0, bias=False, seed=1, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(40000, K, device="cuda", dtype=torch.bfloat16)  # y has 2.8e9 > 2^31 elements
    y = layer(x)
    rows = torch.tensor([0, 39999])
    want = (x[rows].double() @ layer.backbone_weight(dtype=torch.bfloat16).double().T)
    assert torch.allclose(y[rows].double(), want, rtol=2e-2, atol=2e-2)
