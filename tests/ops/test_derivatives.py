"""Derivatives past the first: second order (create_graph=True), forward mode and torch.func, on
both backends, each held to the same computation with the dense backbone stored."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lottalora
from lottalora.backbone import BackboneBlock
from lottalora.ops import autograd as op_autograd
from lottalora.ops import seeded_linear, seeded_linear_shard
from tests.support.tolerances import assert_close, assert_close_to_baseline

BACKENDS = ["torch", "triton"]
# The Triton backend computes in float32 at most (its twins run interpreted here); gradgradcheck's
# finite differences in float32 then need a step and a tolerance that float32 rounding allows:
# the op is polynomial (degree 3 in its inputs), so eps = 1e-2 leaves a truncation error of
# ~1e-4 relative, and rounding ~1e-5 / eps. A lost or doubled term is off by 100%.
# fast_mode checks a random projection of each Jacobian (one directional difference instead of
# one per input element): the interpreted kernels run a few times instead of a hundred.
FLOAT32_GRADGRADCHECK = dict(eps=1e-2, atol=2e-2, rtol=2e-2, fast_mode=True)
FLOAT64_GRADGRADCHECK = dict(eps=1e-6, atol=1e-6, rtol=1e-4)


def _dtype(backend):
    return torch.float64 if backend == "torch" else torch.float32


def _inputs(block: BackboneBlock, R: int, dtype, separate: bool, M: int = 3, seed: int = 0, device="cpu"):
    """(x, lora_input or None, A, B, beta, bias), all leaves requiring grad."""
    g = torch.Generator().manual_seed(seed)
    t = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * 0.5).to(  # noqa: E731
        device=device, dtype=dtype).requires_grad_()
    K, N = block.in_features, block.out_features
    x = t(M, K)
    xl = t(M, K) if separate else None
    A, B = (t(R, K), t(N, R)) if R else (None, None)
    beta = torch.tensor([0.8], dtype=dtype, device=device, requires_grad=True)
    return x, xl, A, B, beta, t(N)


def _dense(x, w, A, B, beta, bias, scale, xl):
    """The op with W stored: plain PyTorch, in the inputs' dtype."""
    y = beta * (x @ w.T) + bias
    if A is not None:
        y = y + scale * ((xl if xl is not None else x) @ A.T) @ B.T
    return y


def _blocks():
    spec = lottalora.BackboneSpec(7, 2, 140, 70)
    # The whole of a small layer, and a block whose columns cross a 128-column call span and
    # whose rows start inside a 64-row span (a tensor-parallel rank's, through the shard op).
    return {"whole": BackboneBlock.whole(lottalora.BackboneSpec(7, 2, 11, 9)),
            "shard": BackboneBlock(spec, (60, 69), (120, 131))}


def _op(block: BackboneBlock):
    """The seeded op on ``block``: seeded_linear on a whole layer, seeded_linear_shard on a block."""
    def op(x, A, B, beta, bias, scale, lora_input):
        if block.is_whole:
            return seeded_linear(x, block.spec, A, B, beta, bias, scale, lora_input)
        return seeded_linear_shard(x, block.spec, block.rows, block.cols, A, B, beta, bias, scale, lora_input)
    return op


def _gradgradcheck(block, R, separate, dtype, tolerances, device="cpu"):
    x, xl, A, B, beta, bias = _inputs(block, R, dtype, separate, M=2, device=device)
    present = [t for t in (x, xl, A, B, beta, bias) if t is not None]
    op = _op(block)

    def fn(*ts):
        it = iter(ts)
        x_, xl_ = next(it), (next(it) if separate else None)
        A_, B_ = (next(it), next(it)) if R else (None, None)
        return op(x_, A_, B_, next(it), next(it), 0.5, xl_)
    return torch.autograd.gradgradcheck(fn, tuple(present), **tolerances)


@pytest.mark.parametrize("where", ["whole", "shard"])
@pytest.mark.parametrize("R,separate", [(0, False), (3, False), (3, True)])
def test_gradgradcheck_passes_on_the_torch_backend_in_float64(R, separate, where, monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    assert _gradgradcheck(_blocks()[where], R, separate, torch.float64, FLOAT64_GRADGRADCHECK)


@pytest.mark.filterwarnings("ignore:Input #\\d requires gradient and is not a double")
def test_gradgradcheck_passes_on_the_triton_backend_in_float32(monkeypatch, device):
    """The interpreted kernels, the adapters and dropout's lora_input (the block op's Triton path is
    held by the second-derivative test below). Undefined gradients are the autograd plumbing's,
    checked on the torch backend: skipped here, they triple the kernel runs."""
    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    block = BackboneBlock.whole(lottalora.BackboneSpec(7, 2, 5, 4))
    assert _gradgradcheck(block, 2, True, torch.float32, {**FLOAT32_GRADGRADCHECK, "check_undefined_grad": False},
                          device)


def _second_order(op, inputs, scale=0.5):
    """grad of <grad(L, inputs), v> w.r.t. inputs for L = sum((y * c)^2): a second derivative
    through every first-order gradient (dy depends on the inputs through y)."""
    x, xl, A, B, beta, bias = inputs
    present = [t for t in inputs if t is not None]
    y = op(x, A, B, beta, bias, scale, xl)
    c = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    grads = torch.autograd.grad((y * c).pow(2).sum(), present, create_graph=True)
    v = [torch.cos(torch.arange(g.numel(), dtype=g.dtype, device=g.device)).reshape(g.shape) for g in grads]
    return torch.autograd.grad(sum((g * vi).sum() for g, vi in zip(grads, v, strict=True)), present)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["whole", "shard"])
@pytest.mark.parametrize("R,separate", [(0, False), (3, False), (3, True)])
def test_second_derivatives_on_every_path_equal_the_dense_ones(backend, where, R, separate, monkeypatch, device):
    """d/d(x, lora_input, A, B, beta, bias) of the gradients w.r.t. all of them: against the
    dense backbone in float64, and (Triton, float32) within twice the dense float32 error."""
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    block = _blocks()[where]
    dtype = _dtype(backend)
    inputs = _inputs(block, R, dtype, separate, device=device)
    got = _second_order(_op(block), inputs)
    w = lottalora.backbone_block(block.spec, block.rows, block.cols, device=device)

    def dense_copy(cast):
        return [t.detach().to(cast).requires_grad_() if t is not None else None for t in inputs]
    want = _second_order(lambda x, A, B, beta, bias, s, xl: _dense(x, w.double(), A, B, beta, bias, s, xl),
                         dense_copy(torch.float64))
    baseline = _second_order(lambda x, A, B, beta, bias, s, xl: _dense(x, w.to(dtype), A, B, beta, bias, s, xl),
                             dense_copy(dtype))
    names = [n for n, t in zip(["x", "lora_input", "A", "B", "beta", "bias"], inputs, strict=True) if t is not None]
    for name, g, b, w_ in zip(names, got, baseline, want, strict=True):
        assert g.dtype == dtype
        assert_close_to_baseline(g, b, w_, dtype, f"second derivative via {name} ({backend}, {where}, r={R})")


class _StoredLinear(nn.Module):
    """A seeded layer's twin with its backbone stored as a plain tensor, parameters copied."""

    def __init__(self, layer: lottalora.Linear):
        super().__init__()
        self.register_buffer("weight", layer.backbone_weight(dtype=layer.beta.dtype))
        self.lora_A, self.lora_B, self.beta, self.bias = (nn.Parameter(p.detach().clone()) for p in
                                                          (layer.lora_A, layer.lora_B, layer.beta, layer.bias))
        self.scaling = layer.scaling

    def forward(self, x):
        return self.beta * F.linear(x, self.weight) + self.scaling * F.linear(F.linear(x, self.lora_A),
                                                                              self.lora_B) + self.bias


def _critic(dtype, device="cpu"):
    torch.manual_seed(0)
    model = nn.Sequential(lottalora.Linear(6, 16, rank=4, stream=0), nn.Tanh(),
                          lottalora.Linear(16, 1, rank=2, stream=1)).to(device=device, dtype=dtype)
    with torch.no_grad():
        for m in model:
            if isinstance(m, lottalora.Linear):
                m.lora_B.normal_(0, 0.3)
    dense = nn.Sequential(_StoredLinear(model[0]), nn.Tanh(), _StoredLinear(model[2]))
    return model, dense


def _wgan_gp_step(critic, opt, real, fake, alpha):
    """One critic step of WGAN-GP: the gradient penalty's norm of d critic / d input is in the loss."""
    interp = (alpha * real + (1 - alpha) * fake).requires_grad_()
    grad_in, = torch.autograd.grad(critic(interp).sum(), interp, create_graph=True)
    penalty = (grad_in.norm(dim=1) - 1).pow(2).mean()
    loss = critic(fake).mean() - critic(real).mean() + 10 * penalty
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gradient_penalty_trains_as_with_the_dense_backbone_stored(backend, monkeypatch, device):
    """WGAN-GP's critic, five Adam steps: the seeded model and the same model with W stored
    follow the same trajectory, loss and every parameter, to float rounding."""
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    dtype = _dtype(backend)
    model, dense = _critic(dtype, device)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (model, dense)]
    g = torch.Generator().manual_seed(1)
    rtol = 1e-9 if dtype == torch.float64 else 2e-4
    for step in range(5):
        real, fake = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g) * 2
        alpha = torch.rand(8, 1, generator=g)
        real, fake, alpha = (t.to(device=device, dtype=dtype) for t in (real, fake, alpha))
        losses = [_wgan_gp_step(m, o, real, fake, alpha) for m, o in zip((model, dense), opts, strict=True)]
        torch.testing.assert_close(losses[0], losses[1], rtol=rtol, atol=rtol, msg=f"loss at step {step}")
    seeded = [p for m in (model[0], model[2]) for p in (m.lora_A, m.lora_B, m.beta, m.bias)]
    stored = [p for m in (dense[0], dense[2]) for p in (m.lora_A, m.lora_B, m.beta, m.bias)]
    moved = [(s - s0).abs().max().item() for s, s0 in zip(seeded, _critic(dtype, device)[0].parameters(), strict=True)]
    assert min(moved[:-1]) > 1e-4, "every parameter trains (but the output bias: the loss does not depend on it)"
    for i, (s, d) in enumerate(zip(seeded, stored, strict=True)):
        torch.testing.assert_close(s, d, rtol=rtol, atol=rtol, msg=f"parameter {i} after 5 steps")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hessian_vector_product_equals_the_dense_models(backend, monkeypatch, device):
    """H v of a loss w.r.t. every parameter, by double backward and by torch.func's
    forward-over-reverse (jvp of grad), against the model with W stored."""
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    dtype = _dtype(backend)
    model, dense = _critic(dtype, device)
    x = torch.randn(5, 6, dtype=dtype, generator=torch.Generator().manual_seed(2)).to(device)
    names = [n for n, _ in model.named_parameters()]

    def hvp_double_backward(m):
        params = list(m.parameters())
        grads = torch.autograd.grad(m(x).pow(2).sum(), params, create_graph=True)
        v = [torch.ones_like(p) / p.numel() for p in params]
        return torch.autograd.grad(sum((g * vi).sum() for g, vi in zip(grads, v, strict=True)), params)

    def hvp_forward_over_reverse(m):
        params = {n: p.detach() for n, p in m.named_parameters()}
        buffers = dict(m.named_buffers())
        loss = lambda ps: torch.func.functional_call(m, (ps, buffers), (x,)).pow(2).sum()  # noqa: E731
        v = {n: torch.ones_like(p) / p.numel() for n, p in params.items()}
        _, hv = torch.func.jvp(torch.func.grad(loss), (params,), (v,))
        return [hv[n] for n in params]

    want = hvp_double_backward(dense)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for how in (hvp_double_backward, hvp_forward_over_reverse):
        for name, g, w in zip(names, how(model), want, strict=True):
            torch.testing.assert_close(g, w, **tol, msg=f"{how.__name__}: H v for {name}")


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("backend", BACKENDS)
def test_first_order_gradients_with_create_graph_match_the_fused_ones_and_are_writable(backend, monkeypatch,
                                                                                      device):
    """create_graph=True builds the gradients from differentiable pieces: the fused gradients to
    float rounding (A's and the bias's to the bit: the same ops; B's differ where the kernel made
    x @ A^T), writable in place as gradient clipping writes them."""
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    layer = lottalora.Linear(6, 5, rank=2, device=device)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 6, device=device, requires_grad=True)
    inputs = (x, *layer.parameters())
    plain = torch.autograd.grad(layer(x).pow(2).sum(), inputs)
    graphed = torch.autograd.grad(layer(x).pow(2).sum(), inputs, create_graph=True)
    for name, p, g in zip(["x", "A", "B", "beta", "bias"], plain, graphed, strict=True):
        assert g.requires_grad, name
        assert_close(g, p.double(), torch.float32, f"d{name} with create_graph")
        if name in ("A", "bias"):
            assert torch.equal(g, p), name
    graphed[1].mul_(0.5)  # in place, as gradient clipping does
    layer(x).pow(2).sum().backward(create_graph=True)
    torch.nn.utils.clip_grad_norm_(layer.parameters(), 1e-3)
    layer.zero_grad(set_to_none=True)  # break the parameter <-> grad cycle create_graph makes


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backward_without_a_graph_runs_only_the_fused_kernels(backend, monkeypatch, device):
    """create_graph=False (a training step) never reaches the differentiable pieces."""
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)

    def refuse(*args):
        raise AssertionError("the differentiable pieces ran in a backward that builds no graph")
    monkeypatch.setattr(op_autograd, "_differentiable_grads", refuse)
    layer = lottalora.Linear(20, 12, rank=3, lora_dropout=0.2, device=device)
    x = torch.randn(5, 20, device=device, requires_grad=True)
    layer(x).pow(2).sum().backward()
    assert x.grad is not None and layer.lora_A.grad is not None and layer.beta.grad is not None


def _tangent_inputs(block, dtype, g, device):
    K, N = block.in_features, block.out_features
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)  # noqa: E731
    primals = (t(3, K), t(3, K), t(2, K), t(N, 2), t(1), t(N))  # x, lora_input, A, B, beta, bias
    return primals, tuple(t(*p.shape) for p in primals)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("api", ["forward_ad", "torch.func.jvp"])
@pytest.mark.parametrize("where", ["whole", "shard"])
def test_forward_mode_gives_the_dense_tangent(backend, api, where, monkeypatch, device):
    """The jvp of the seeded product is the seeded product of the tangent: tangents on every
    input at once, through dual tensors and torch.func.jvp."""
    import torch.autograd.forward_ad as fwAD

    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    block = _blocks()[where]
    dtype = _dtype(backend)
    primals, tangents = _tangent_inputs(block, dtype, torch.Generator().manual_seed(3), device)
    op = _op(block)
    fn = lambda x, xl, A, B, beta, bias: op(x, A, B, beta, bias, 0.5, xl)  # noqa: E731
    if api == "forward_ad":
        with fwAD.dual_level():
            y = fn(*(fwAD.make_dual(p, t) for p, t in zip(primals, tangents, strict=True)))
            got_y, got_t = fwAD.unpack_dual(y)
    else:
        got_y, got_t = torch.func.jvp(fn, primals, tangents)
    w = lottalora.backbone_block(block.spec, block.rows, block.cols, device=device).double()
    dense = lambda x, xl, A, B, beta, bias: _dense(x, w, A, B, beta, bias, 0.5, xl)  # noqa: E731
    want_y, want_t = torch.func.jvp(dense, tuple(p.double() for p in primals), tuple(t.double() for t in tangents))
    assert_close(got_y, want_y, dtype, f"y ({backend}, {api})")
    assert_close(got_t, want_t, dtype, f"tangent ({backend}, {api})")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_frozen_layer_carries_a_dual_inputs_tangent(backend, monkeypatch, device):
    """Dual tensors do not report requires_grad: a frozen layer's call still runs the
    differentiable op rather than the bare one, which would drop the tangent."""
    import torch.autograd.forward_ad as fwAD

    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    layer = lottalora.Linear(12, 10, rank=3, device=device).requires_grad_(False)
    x, tx = torch.randn(4, 12, device=device), torch.randn(4, 12, device=device)
    with fwAD.dual_level():
        _, tangent = fwAD.unpack_dual(layer(fwAD.make_dual(x, tx)))
    want = layer.beta * tx @ layer.backbone_weight().T  # lora_B = 0: the adapter adds no tangent
    assert_close(tangent, want.double(), torch.float32, "tangent")


def test_the_fused_function_itself_refuses_forward_mode_by_name():
    """SeededLinearFunction (the fused op) has no jvp rule: applied to dual tensors directly it
    refuses, naming jvp; seeded_linear routes them to the differentiable pieces instead."""
    import torch.autograd.forward_ad as fwAD

    spec = lottalora.BackboneSpec(0, 0, 10, 5)
    x, beta = torch.randn(3, 10), torch.ones(1)
    with fwAD.dual_level(), pytest.raises((NotImplementedError, RuntimeError), match="jvp"):
        lottalora.SeededLinearFunction.apply(fwAD.make_dual(x, torch.randn_like(x)), None, None, beta, None, spec,
                                             1.0, "torch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_per_sample_gradients_and_input_hessians_equal_the_dense_ones(backend, monkeypatch, device):
    """vmap(grad) (per-sample gradients) and hessian (jacfwd of jacrev) see through the pieces'
    vmap and jvp rules."""
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    dtype = _dtype(backend)
    model, dense = _critic(dtype, device)
    x = torch.randn(4, 6, dtype=dtype, generator=torch.Generator().manual_seed(4)).to(device)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for m_seeded, m_dense in ((model, dense),):
        params = {n: p.detach() for n, p in m_seeded.named_parameters()}
        dense_params = {n: p.detach() for n, p in m_dense.named_parameters()}
        buffers = dict(m_dense.named_buffers())

        def per_sample(m, ps, bufs):
            loss = lambda ps_, xi: torch.func.functional_call(m, (ps_, bufs), (xi[None],)).pow(2).sum()  # noqa: E731
            return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(ps, x)
        got, want = per_sample(m_seeded, params, {}), per_sample(m_dense, dense_params, buffers)
        for n in params:
            torch.testing.assert_close(got[n], want[n], **tol, msg=f"per-sample gradient of {n}")
        hess = torch.func.hessian(lambda xi: m_seeded(xi).sum())(x[0])
        want_hess = torch.func.hessian(lambda xi: m_dense(xi).sum())(x[0])
        torch.testing.assert_close(hess, want_hess, **tol, msg="input Hessian")
