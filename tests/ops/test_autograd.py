"""Gradients of the seeded layer: exact on the reference, kernels against the reference."""

import pytest
import torch

import lottalora
from lottalora.ops import seeded_linear
from tests.support.tolerances import assert_close, assert_close_to_baseline


def _params(K, N, R, dtype, device, bias=True):
    g = lambda *s: torch.randn(*s, dtype=dtype, device=device, requires_grad=True)  # noqa: E731
    A = g(R, K) if R else None
    B = g(N, R) if R else None
    beta = torch.tensor(0.8, dtype=dtype, device=device, requires_grad=True)
    return A, B, beta, (g(N) if bias else None)


@pytest.mark.parametrize("R", [0, 3])
def test_reference_gradients_pass_gradcheck_in_float64(R, monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    spec = lottalora.BackboneSpec(7, 2, 11, 9)
    A, B, beta, bias = _params(11, 9, R, torch.float64, "cpu")
    x = torch.randn(2, 3, 11, dtype=torch.float64, requires_grad=True)
    inputs = tuple(t for t in (x, A, B, beta, bias) if t is not None)

    def fn(*ts):
        it = iter(ts)
        x_, A_, B_ = next(it), (next(it) if R else None), (next(it) if R else None)
        return seeded_linear(x_, spec, A_, B_, next(it), next(it), scale=0.5)
    assert torch.autograd.gradcheck(fn, inputs)


def _grads(backend, spec, x, A, B, beta, bias, dy, monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    leaves = [t for t in (x, A, B, beta, bias) if t is not None and t.requires_grad]
    for t in leaves:
        t.grad = None
    seeded_linear(x, spec, A, B, beta, bias, scale=0.5).backward(dy)
    return [t.grad.clone() for t in leaves]


def _formula_grads(w, leaves, dy, R):
    """Gradients of the plain PyTorch formula with W materialised, computed in w's dtype."""
    x, A, B, beta, bias = leaves
    y = beta * x @ w.T + bias
    if R:
        y = y + 0.5 * (x @ A.T) @ B.T
    y.backward(dy.to(w.dtype))
    return [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M,K,N,R", [(1, 45, 37, 0), (19, 77, 33, 5), (33, 4, 70, 2)])
def test_kernel_gradients_match_the_float64_formula(dtype, M, K, N, R, monkeypatch, device):
    spec = lottalora.BackboneSpec(77, 5, K, N)
    A, B, beta, bias = _params(K, N, R, dtype, device)
    x = torch.randn(M, K, dtype=dtype, device=device, requires_grad=True)
    dy = torch.randn(M, N, dtype=dtype, device=device)
    got = _grads("triton", spec, x, A, B, beta, bias, dy, monkeypatch)

    w = lottalora.backbone_block(spec, device=device).to(dtype)
    copies = lambda cast: [t.detach().to(cast).requires_grad_() if t is not None else None  # noqa: E731
                           for t in (x, A, B, beta, bias)]
    want = _formula_grads(w.double(), copies(torch.float64), dy, R)
    baseline = _formula_grads(w, copies(dtype), dy, R)
    names = ["x", "A", "B", "beta", "bias"] if R else ["x", "beta", "bias"]
    for name, g, b, w_ in zip(names, got, baseline, want, strict=True):
        assert g.dtype == dtype
        assert_close_to_baseline(g, b, w_, dtype, f"d{name} {dtype} {M}x{K}x{N} r={R}")


def test_reference_gradients_with_a_separate_adapter_input_pass_gradcheck_in_float64(monkeypatch):
    """lora_input (the adapter's own input, e.g. dropout(x)): its gradient is the LoRA's, x's is
    the backbone's only."""
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    spec = lottalora.BackboneSpec(7, 2, 11, 9)
    A, B, beta, bias = _params(11, 9, 3, torch.float64, "cpu")
    x, xl = (torch.randn(2, 3, 11, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda *ts: seeded_linear(ts[0], spec, *ts[2:], scale=0.5, lora_input=ts[1]),
                                    (x, xl, A, B, beta, bias))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("M", [3, 40])  # the decode kernel (its x @ A^T programs read lora_input) and two-phase
def test_a_separate_adapter_input_matches_the_unfused_formula(backend, M, monkeypatch, device):
    spec = lottalora.BackboneSpec(5, 9, 70, 33)
    A, B, beta, bias = _params(70, 33, 6, torch.float32, device)
    x, xl = (torch.randn(M, 70, device=device, requires_grad=True) for _ in range(2))
    dy = torch.randn(M, 33, device=device)
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    y = seeded_linear(x, spec, A, B, beta, bias, scale=0.5, lora_input=xl)
    y.backward(dy)
    got = [y.detach()] + [t.grad.clone() for t in (x, xl, A, B, beta, bias)]
    w = lottalora.backbone_block(spec, device=device).double()
    leaves = [t.detach().double().requires_grad_() for t in (x, xl, A, B, beta, bias)]
    x64, xl64, A64, B64, beta64, bias64 = leaves
    want_y = beta64 * x64 @ w.T + 0.5 * (xl64 @ A64.T) @ B64.T + bias64
    want_y.backward(dy.double())
    for name, g, w_ in zip(["y", "x", "lora_input", "A", "B", "beta", "bias"], got,
                           [want_y.detach()] + [t.grad for t in leaves], strict=True):
        assert_close(g, w_, torch.float32, f"{name} {backend} M={M}")


def test_a_separate_adapter_input_is_checked(device):
    spec = lottalora.BackboneSpec(5, 9, 20, 10)
    A, B, beta, bias = _params(20, 10, 2, torch.float32, device)
    x = torch.randn(4, 20, device=device)
    with pytest.raises(ValueError, match=r"lora_input must have shape \(4, 20\)"):
        seeded_linear(x, spec, A, B, beta, bias, lora_input=torch.randn(4, 19, device=device))
    with pytest.raises(ValueError, match="without an adapter"):
        seeded_linear(x, spec, None, None, beta, bias, lora_input=x)
    with pytest.raises(TypeError, match="lora_input must be a torch.Tensor"):
        seeded_linear(x, spec, A, B, beta, bias, lora_input=[1.0])


@pytest.mark.parametrize("needs", [
    dict(x=True, A=False, B=False, beta=False, bias=False),
    dict(x=False, A=False, B=False, beta=True, bias=False),
    dict(x=False, A=True, B=True, beta=False, bias=True),
    dict(x=True, A=True, B=False, beta=True, bias=False),
])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_any_subset_of_inputs_may_require_grad(needs, backend, monkeypatch, device):
    spec = lottalora.BackboneSpec(3, 3, 20, 17)
    A, B, beta, bias = _params(20, 17, 3, torch.float32, device)
    x = torch.randn(6, 20, device=device, requires_grad=True)
    for name, t in zip(["x", "A", "B", "beta", "bias"], (x, A, B, beta, bias), strict=True):
        t.requires_grad_(needs[name])
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    y = seeded_linear(x, spec, A, B, beta, bias, scale=1.0)
    if not any(needs.values()):
        return
    y.sum().backward()
    for name, t in zip(["x", "A", "B", "beta", "bias"], (x, A, B, beta, bias), strict=True):
        assert (t.grad is not None) == needs[name], name
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    names = ["x", "A", "B", "beta", "bias"]
    leaves = [t.detach().clone().requires_grad_(needs[n]) for n, t in zip(names, (x, A, B, beta, bias), strict=True)]
    seeded_linear(leaves[0], spec, *leaves[1:], scale=1.0).sum().backward()
    for n, t, r in zip(["x", "A", "B", "beta", "bias"], (x, A, B, beta, bias), leaves, strict=True):
        if needs[n]:
            assert_close(t.grad, r.grad.double(), torch.float32, f"d{n}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_autograd_saves_no_out_by_in_tensor(backend, monkeypatch, device):
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    layer = lottalora.Linear(48, 40, rank=4, device=device)
    x = torch.randn(3, 48, device=device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        y = layer(x)
    y.sum().backward()
    assert saved, "the hook saw nothing"
    assert all(torch.Size(s).numel() < 48 * 40 for s in saved), saved


def test_a_layer_trains_on_a_linear_target():
    torch.manual_seed(0)
    layer = lottalora.Linear(16, 8, rank=4)
    target = torch.nn.Linear(16, 8)
    opt = torch.optim.Adam(layer.parameters(), lr=3e-2)
    x = torch.randn(256, 16)
    with torch.no_grad():
        y_true = target(x)
    first = None
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(layer(x), y_true)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    assert layer.lora_B.abs().sum() > 0 and layer.beta.grad is not None


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_activation_checkpointing_gives_the_plain_gradients(backend, use_reentrant, dropout, monkeypatch, device):
    """torch.utils.checkpoint recomputes the forward in backward: gradients equal a plain run's
    bit for bit in both modes (non-reentrant allows each saved tensor one unpack)."""
    from torch.utils.checkpoint import checkpoint

    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    torch.manual_seed(0)
    layer = lottalora.Linear(24, 20, rank=4, seed=3, lora_dropout=dropout).to(device)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 5, 24, device=device)
    dy = torch.randn(2, 5, 20, device=device)

    def grads(run):
        layer.zero_grad()
        xx = x.clone().requires_grad_()
        torch.manual_seed(1)  # the same dropout mask for both runs
        run(xx).backward(dy)
        return [xx.grad] + [p.grad for p in (layer.lora_A, layer.lora_B, layer.beta, layer.bias)]
    want = grads(layer)
    got = grads(lambda xx: checkpoint(layer, xx, use_reentrant=use_reentrant))
    for name, g, w in zip(["x", "A", "B", "beta", "bias"], got, want, strict=True):
        assert torch.equal(g, w), name


def test_the_function_applied_with_its_eight_original_arguments_differentiates():
    """SeededLinearFunction.apply without lora_input (its arguments before lora_input existed)."""
    spec = lottalora.BackboneSpec(0, 0, 10, 5)
    x, a, b, beta = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((3, 10), (2, 10), (5, 2), (1,)))
    lottalora.SeededLinearFunction.apply(x, a, b, beta, None, spec, 0.5, "torch").sum().backward()
    want = [t.grad.clone() for t in (x, a, b, beta)]
    for t in (x, a, b, beta):
        t.grad = None
    seeded_linear(x, spec, a, b, beta, None, 0.5).sum().backward()
    assert all(torch.equal(g, t.grad) for g, t in zip(want, (x, a, b, beta), strict=True))
