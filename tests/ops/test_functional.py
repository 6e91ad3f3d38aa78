"""lottalora.seeded_linear at its boundary: arguments refused by name, and autocast."""

import numpy as np
import pytest
import torch

import lottalora
from lottalora.ops import seeded_linear

BACKENDS = ["torch", "triton"]


def _args(device="cpu", dtype=torch.float32):
    spec = lottalora.BackboneSpec(5, 1, 12, 10, init="gaussian")
    g = torch.Generator().manual_seed(0)
    t = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return dict(x=t(4, 12), spec=spec, lora_A=t(3, 12), lora_B=t(10, 3),
                beta=torch.tensor(0.75, device=device, dtype=dtype), bias=t(10), scale=0.5)


@pytest.mark.parametrize("change,error,match", [
    (dict(beta=0.5), TypeError, "beta must be a one-element torch.Tensor, got float"),
    (dict(beta=torch.tensor(1)), TypeError, "beta must be a floating-point tensor"),
    (dict(spec=(5, 1, 12, 10)), TypeError, "spec must be a lottalora.BackboneSpec, got tuple"),
    (dict(scale="big"), TypeError, "scale must be a real number, got str 'big'"),
    (dict(scale=True), TypeError, "scale must be a real number, got bool"),
    (dict(scale=float("nan")), ValueError, "scale must be finite"),
    (dict(scale=float("inf")), ValueError, "scale must be finite"),
    (dict(lora_A=np.zeros((3, 12), dtype=np.float32)), TypeError, "lora_A must be a torch.Tensor or None, got ndarray"),
    (dict(bias=[0.0] * 10), TypeError, "bias must be a torch.Tensor or None, got list"),
    (dict(x=torch.empty(4, 12, device="meta")), ValueError, "lora_A is on cpu but the input is on meta"),
    (dict(lora_B=torch.empty(10, 3, device="meta")), ValueError, "lora_B is on meta.*materialize"),
])
def test_bad_arguments_are_refused_by_name(change, error, match):
    args = {**_args(), **change}
    with pytest.raises(error, match=match):
        seeded_linear(**args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_equals_the_explicit_bf16_computation_bit_for_bit(backend, monkeypatch, device):
    """Autocast casts the arguments as nn.Linear's, and nothing else: the op's own float32
    accumulation is not recast to bf16, forward or backward."""
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    args = _args(device)
    leaves = {k: v.requires_grad_() for k, v in args.items() if isinstance(v, torch.Tensor)}
    dy = torch.randn(4, 10, device=device).to(torch.bfloat16)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = seeded_linear(**args)
        y.backward(dy)  # a backward inside the autocast region must not be recast either
    got = [y] + [leaves[k].grad for k in leaves]

    explicit = {k: (v.detach().to(torch.bfloat16) if k not in ("beta",) else v.detach()).requires_grad_()
                for k, v in leaves.items()}
    want_y = seeded_linear(**{**args, **explicit})
    want_y.backward(dy)
    want = [want_y] + [explicit[k].grad.to(leaves[k].dtype) for k in leaves]
    assert y.dtype == torch.bfloat16
    for name, g, w in zip(["y", *leaves], got, want, strict=True):
        assert torch.equal(g, w), f"{name}: {(g != w).float().mean().item():.0%} of values differ"


def test_float64_stays_float64_under_autocast_as_with_nn_linear():
    layer = lottalora.Linear(6, 4, rank=2, dtype=torch.float64)
    dense = torch.nn.Linear(6, 4, dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64)
    want = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dense(x).dtype == torch.float64
        y = layer(x)
    assert y.dtype == torch.float64 and torch.equal(y, want)


def test_float64_on_the_triton_backend_is_refused_naming_the_backend_that_computes_it(monkeypatch):
    """A float64 layer builds (a DoRA one's row norms too: they are made in float32 there, as the
    backend computes) and its call is refused with the way out, not inside a kernel."""
    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    for use_dora in (False, True):
        layer = lottalora.Linear(8, 6, rank=2, use_dora=use_dora, dtype=torch.float64)
        with pytest.raises(TypeError, match=r"float64 \(the torch backend computes it.*=torch"):
            layer(torch.randn(2, 8, dtype=torch.float64))
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    assert layer(torch.randn(2, 8, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "frozen"])
def test_forward_without_autograd_equals_the_autograd_forward(backend, mode, monkeypatch, device):
    """Without a gradient to track (no_grad, inference_mode, nothing requiring grad) the op runs
    without its autograd node: the same values, bit for bit, 3-D inputs and a separate adapter
    input included, and no graph."""
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    args = _args(device)
    args["x"] = args["x"].reshape(2, 2, 12)
    args["lora_input"] = torch.randn(2, 2, 12, device=device)
    tracked = {k: v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    want = seeded_linear(**tracked)
    assert want.grad_fn is not None
    if mode == "frozen":
        got = seeded_linear(**args)
    else:
        with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
            got = seeded_linear(**tracked)
    assert got.grad_fn is None and got.shape == (2, 2, 10)
    assert torch.equal(got, want.detach())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("version", [1, 2])
def test_an_empty_batch_gives_empty_outputs_and_zero_gradients(backend, version, monkeypatch, device):
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    layer = lottalora.Linear(12, 10, rank=3, stream_version=version).to(device)
    x = torch.randn(2, 0, 12, device=device, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 0, 10)
    y.sum().backward()
    assert x.grad.shape == x.shape
    for p in (layer.lora_A, layer.lora_B, layer.beta, layer.bias):
        assert torch.equal(p.grad, torch.zeros_like(p))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("version,m,one_pass", [(2, 3, False), (2, 40, False), (2, 5, True), (1, 6, False)])
def test_a_strided_bias_is_read_as_its_elements(backend, version, m, one_pass, monkeypatch):
    """A bias that is a strided view (every other element of a tensor): the kernels read a bias
    with unit stride, so they must be handed its elements, not its storage's, in every regime
    (decode, two-phase, one-pass, stream v1), on repeated calls too."""
    from lottalora.ops import seeded_linear_ref

    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    monkeypatch.setenv("LOTTALORA_ONE_PASS", "1" if one_pass else "0")
    spec = lottalora.BackboneSpec(5, 1, 12, 10, version=version)
    g = torch.Generator().manual_seed(1)
    a, b, wide = torch.randn(3, 12, generator=g), torch.randn(10, 3, generator=g), torch.randn(20, generator=g)
    bias, beta = wide[::2], torch.tensor([0.75])
    for _ in range(2):
        x = torch.randn(m, 12, generator=g)
        want = seeded_linear_ref(x.double(), spec, a.double(), b.double(), beta.double(), bias.double(), 0.5)
        got = seeded_linear(x, spec, a, b, beta, bias, 0.5)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
