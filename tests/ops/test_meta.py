"""Meta and fake tensors: shapes and dtypes without values, as nn.Linear gives them."""

import pytest
import torch
from torch import nn

import lottalora
from lottalora.ops import seeded_linear, seeded_linear_shard

BACKENDS = ["torch", "triton"]


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float32), ("torch", torch.bfloat16),
                                           ("torch", torch.float64), ("triton", torch.float32),
                                           ("triton", torch.bfloat16)])  # float64: the torch backend's
@pytest.mark.parametrize("rank,dropout", [(0, 0.0), (3, 0.0), (3, 0.5)])
def test_a_layer_built_on_meta_gives_meta_outputs_and_gradients(backend, dtype, rank, dropout, monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    with torch.device("meta"):
        layer = lottalora.Linear(12, 10, rank=rank, lora_dropout=dropout, dtype=dtype)
        x = torch.randn(4, 5, 12, dtype=dtype, requires_grad=True)
    y = layer(x)
    assert (y.device.type, y.shape, y.dtype) == ("meta", (4, 5, 10), dtype)
    y.sum().backward()
    assert x.grad.device.type == "meta" and x.grad.shape == x.shape and x.grad.dtype == dtype
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.device.type == "meta", name
        assert (p.grad.shape, p.grad.dtype) == (p.shape, p.dtype), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_functional_and_shard_ops_take_meta_tensors_to_second_order(backend, monkeypatch):
    """A gradient taken with create_graph=True and differentiated again stays on meta."""
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    spec = lottalora.BackboneSpec(3, 4, 300, 70)
    m = lambda *s: torch.empty(*s, device="meta", requires_grad=True)  # noqa: E731
    for rows, cols in (((0, 70), (0, 300)), ((5, 40), (100, 229))):
        n, k = rows[1] - rows[0], cols[1] - cols[0]
        x, xl, a, b, beta, bias = m(2, 3, k), m(2, 3, k), m(4, k), m(n, 4), m(1), m(n)
        if (rows, cols) == ((0, 70), (0, 300)):
            y = seeded_linear(x, spec, a, b, beta, bias, 0.5, lora_input=xl)
        else:
            y = seeded_linear_shard(x, spec, rows, cols, a, b, beta, bias, 0.5, lora_input=xl)
        assert (y.device.type, y.shape) == ("meta", (2, 3, n))
        grads = torch.autograd.grad(y.pow(2).sum(), (x, xl, a, b, beta, bias), create_graph=True)
        again = torch.autograd.grad(sum(g.sum() for g in grads), (x, xl, a, b, beta, bias))
        for t, g, h in zip((x, xl, a, b, beta, bias), grads, again, strict=True):
            assert g.device.type == h.device.type == "meta" and g.shape == h.shape == t.shape


def test_a_model_built_on_meta_traces_its_shapes_as_with_nn_linear():
    with torch.device("meta"):
        model = nn.Sequential(lottalora.Linear(40, 64, rank=4), nn.GELU(), lottalora.Linear(64, 64, rank=0),
                              nn.LayerNorm(64), nn.Linear(64, 10))
        dense = nn.Sequential(nn.Linear(40, 64), nn.GELU(), nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 10))
        x = torch.randn(7, 3, 40)
    assert model(x).shape == dense(x).shape == (7, 3, 10)
    assert model(x).device.type == "meta"


def test_a_cpu_input_with_meta_parameters_names_materialize():
    """Running a meta-built model on real inputs is the user's error: refused with the hint."""
    with torch.device("meta"):
        layer = lottalora.Linear(12, 10, rank=3)
    with pytest.raises(ValueError, match=r"on meta but the input is on cpu.*lottalora.materialize"):
        layer(torch.randn(2, 12))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fake_tensors_give_fake_outputs_and_gradients(backend, monkeypatch, device):
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    with FakeTensorMode():
        layer = lottalora.Linear(300, 70, rank=3, lora_dropout=0.1, device=device)
        x = torch.randn(9, 300, device=device, requires_grad=True)
        y = layer(x)
        gx, = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        gx.sum().backward()
    assert isinstance(y, FakeTensor) and y.shape == (9, 70)
    assert isinstance(gx, FakeTensor) and gx.shape == x.shape
    assert all(isinstance(p.grad, FakeTensor) and p.grad.shape == p.shape for p in layer.parameters())
