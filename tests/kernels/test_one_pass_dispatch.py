"""The one-pass regime behind the dispatch's switch (LOTTALORA_ONE_PASS): off, the proven regimes
run; on, it serves whole layers at every M and tensor-parallel blocks, one launch per op, held to
the float64 reference and to the torch backend (interpreted here; on a GPU the same switch is
what benchmarks/gpu_session.sh turns on once tests/kernels/test_gpu.py has held the bits)."""

import pytest
import torch

import lottalora
from lottalora.backbone import BackboneBlock
from lottalora.ops import seeded_linear_ref, seeded_linear_shard
from lottalora_kernels.seeded_linear import dispatch, one_pass
from tests.support.calls import count_calls
from tests.support.tolerances import assert_close


@pytest.mark.parametrize("on", [False, True])
def test_the_switch_decides_the_regime(monkeypatch, on):
    monkeypatch.setenv("LOTTALORA_ONE_PASS", "1" if on else "0")
    for m in (1, 16, 33, 128, 8192):
        want = "one_pass" if on else ("decode" if m <= dispatch.DECODE_MAX_M else "two_phase")
        assert dispatch.forward_regime(2, m, torch.bfloat16, True) == want
        assert dispatch.input_grad_regime(2, m, torch.float16, True) == want
        assert dispatch.forward_regime(2, m, torch.float32, True) == "two_phase"  # cuBLAS, TF32 or not
        assert dispatch.forward_regime(1, m, torch.bfloat16, True) in ("one_pass_v1", "two_phase")
    assert dispatch.block_regime(2, torch.bfloat16, True) == ("one_pass" if on else None)
    assert dispatch.block_regime(1, torch.bfloat16, True) is None


def _counting(monkeypatch):
    """The one-pass launchers a call goes through, by direction (a layer's or a tensor-parallel
    block's first call at a key; a replayed plan goes through neither)."""
    return count_calls(monkeypatch, one_pass, ("one_pass_fwd", "one_pass_bwd_dx"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [3, 40])
def test_a_layer_runs_one_pass_when_switched_on_and_matches_the_torch_backend(monkeypatch, dtype, m):
    layer = lottalora.Linear(130, 70, rank=3, seed=9).to(dtype)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, m, 130).to(dtype)
    dy = torch.randn(2, m, 70).to(dtype)
    leaves = [x.requires_grad_(), layer.lora_A, layer.lora_B, layer.beta, layer.bias]
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("LOTTALORA_BACKEND", backend)
        monkeypatch.setenv("LOTTALORA_ONE_PASS", "1")
        calls = _counting(monkeypatch)
        y = layer(x)
        results[backend] = (y, torch.autograd.grad(y, leaves, dy))
        if backend == "triton":
            assert calls == ["one_pass_fwd", "one_pass_bwd_dx"]
    assert_close(results["triton"][0], results["torch"][0].double(), dtype, "y")
    for name, g, want in zip(["dx", "dA", "dB", "dbeta", "dbias"], results["triton"][1], results["torch"][1],
                             strict=True):
        assert_close(g, want.double(), dtype, name)


@pytest.mark.parametrize("rows,cols", [((13, 70), (0, 130)), ((0, 70), (29, 101))])
def test_a_tensor_parallel_block_runs_one_pass_on_its_rows_or_columns(monkeypatch, rows, cols):
    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    monkeypatch.setenv("LOTTALORA_ONE_PASS", "1")
    calls = _counting(monkeypatch)
    spec = lottalora.BackboneSpec(4, 7, 130, 70)
    n, k = rows[1] - rows[0], cols[1] - cols[0]
    gen = torch.Generator().manual_seed(0)
    x, a, b, bias = (torch.randn(*s, generator=gen, dtype=torch.float64).float().requires_grad_()
                     for s in ((5, k), (2, k), (n, 2), (n,)))
    beta = torch.tensor([0.7], requires_grad=True)
    y = seeded_linear_shard(x, spec, rows, cols, a, b, beta, bias, 0.5)
    dy = torch.randn(5, n, generator=gen)
    grads = torch.autograd.grad(y, (x, a, b, beta, bias), dy)
    assert calls == ["one_pass_fwd", "one_pass_bwd_dx"]
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, a, b, beta, bias)]
    want = seeded_linear_ref(ref_leaves[0], BackboneBlock(spec, rows, cols), *ref_leaves[1:4], ref_leaves[4], 0.5)
    want_grads = torch.autograd.grad(want, ref_leaves, dy.double())
    assert_close(y, want, torch.float32, "y")
    for name, g, w in zip(["dx", "dA", "dB", "dbeta", "dbias"], grads, want_grads, strict=True):
        assert_close(g, w, torch.float32, name)
