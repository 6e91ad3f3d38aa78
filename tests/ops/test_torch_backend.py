"""The CPU path as a real path: it imports without Triton, compiles with torch.compile's default
backend, and its forward's temporaries stay well below the dense weight it replaces."""

import pytest
import torch
from torch import nn

import lottalora
from tests.support.processes import run_uninterpreted


def test_import_lottalora_does_not_import_triton():
    code = "import sys, lottalora; print('triton' in sys.modules)"
    assert run_uninterpreted("-c", code).stdout.strip() == "False"


def test_torch_compile_with_the_default_backend_trains_on_cpu(monkeypatch):
    """Inductor compiles around the registered op (it never traces the generator) in seconds."""
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(lottalora.Linear(40, 64, rank=4, stream=0), nn.ReLU(), lottalora.Linear(64, 10, rank=4,
                                                                                                   stream=1))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lottalora.Linear):
                m.lora_B.normal_()
    x = torch.randn(8, 40, requires_grad=True)
    compiled = torch.compile(model)  # the default backend: Inductor
    y = compiled(x)
    assert torch.allclose(y, model(x), rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
    for p in model.parameters():
        p.grad = None
    x.grad = None
    model(x).square().sum().backward()
    for got, want in zip(grads, [p.grad for p in model.parameters()] + [x.grad], strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("m", [1, 64])
def test_a_forward_takes_well_under_the_dense_weight_in_memory(m):
    """A 4096 x 4096 layer's forward (torch backend, fresh process) adds at its peak less than half
    the 64 MiB float32 weight it replaces (the code its first call loads not counted: a smaller
    layer on the same path warms it up)."""
    from tests.support.memory import peak_bytes_added

    setup = f"""
    import lottalora
    layer, x = lottalora.Linear(4096, 4096, rank=8), torch.randn({m}, 4096)
    with torch.no_grad():  # a small layer on the same path: its first calls load their code
        lottalora.Linear(64, 256, rank=8)(torch.randn({m}, 64))
    """
    step = """
    with torch.no_grad():
        y = layer(x)
    """
    assert peak_bytes_added(setup, step) < 0.5 * 4 * 4096 * 4096


@pytest.mark.parametrize("rows", [1, 4])
def test_the_table_lookup_product_keeps_float32_accuracy_for_inputs_far_from_zero_mean(rows, monkeypatch):
    """Stream v2's few-row product looks up signed byte sums: as accurate as a float32 product
    for an input with a large mean (as subtracted masked sums from sum(x) it lost ~2 digits)."""
    from lottalora.ops import torch_backend

    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    assert rows <= torch_backend.V2_TABLE_GEMV_MAX_M
    layer = lottalora.Linear(8192, torch_backend.V2_TABLE_GEMV_MIN_OUT, rank=0, bias=False, seed=5)
    x = 100 + torch.randn(rows, 8192)
    with torch.no_grad():
        y = layer(x)
        want = x.double() @ layer.backbone_weight().double().T
    error = ((y.double() - want).abs().max() / want.abs().max()).item()
    assert error < 5e-7, error
