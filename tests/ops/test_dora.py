"""DoRA's seeded composition (lottalora.ops.dora) against PEFT's DoRA on the dense backbone and
against a float64 reference: row norms, outputs and every gradient, both backends."""

import pytest
import torch
from torch import nn

import lottalora
from lottalora.backbone import BackboneBlock, backbone_block
from lottalora.ops import dora
from tests.support.tolerances import assert_close

peft = pytest.importorskip("peft")

BACKENDS = ["torch", "triton"]
# (in_features, out_features, init, stream_version)
BACKBONES = [(17, 5, "gaussian", 1), (9, 130, None, 2), (33, 1, "uniform", 1), (1, 7, "rademacher", 1)]


def _tensors(spec, rank, dtype=torch.float32, seed=0, batch=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return dict(x=t(*batch, spec.in_features), lora_A=t(rank, spec.in_features) / 2,
                lora_B=t(spec.out_features, rank) / 8, beta=torch.tensor([0.8], dtype=dtype),
                bias=t(spec.out_features), magnitude=t(spec.out_features).abs() + 0.5)


def _dora_ref(x, w, lora_A, lora_B, beta, bias, scaling, magnitude, lora_input=None):
    """PEFT's DoRA written out in float64 on the dense weight beta * W: the row norm detached,
    the dropped input (if any) feeding the DoRA term, the undropped one the base output."""
    x, w, lora_A, lora_B, beta, bias, magnitude = (t.double() for t in (x, w, lora_A, lora_B, beta, bias, magnitude))
    w0 = beta * w
    norms = torch.linalg.norm(w0 + scaling * lora_B @ lora_A, dim=1).detach()
    scale = magnitude / norms
    base = x @ w0.T + bias
    x_d = x if lora_input is None else lora_input.double()
    return base + (scale - 1) * (x_d @ w0.T) + scale * (scaling * (x_d @ lora_A.T) @ lora_B.T)


def _peft_dora(w0, bias, lora_A, lora_B, magnitude, alpha, use_rslora, lora_dropout=0.0):
    """PEFT's DoRA Linear whose base weight is w0 (out, in), with these A, B and magnitude."""
    out_features, in_features = w0.shape
    base = nn.Sequential(nn.Linear(in_features, out_features, dtype=w0.dtype))
    with torch.no_grad():
        base[0].weight.copy_(w0)
        base[0].bias.copy_(bias)
    config = peft.LoraConfig(r=lora_A.shape[0], lora_alpha=alpha, use_rslora=use_rslora, use_dora=True,
                             target_modules=["0"], lora_dropout=lora_dropout)
    model = peft.get_peft_model(base, config)
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(lora_A)
        layer.lora_B["default"].weight.copy_(lora_B)
        layer.lora_magnitude_vector["default"].weight.copy_(magnitude)
    layer.base_layer.bias.requires_grad_(True)
    return model, layer


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_features,out_features,init,version", BACKBONES)
@pytest.mark.parametrize("rank", [1, 3])
def test_weight_row_norms_equal_the_dense_norms(backend, in_features, out_features, init, version, rank,
                                                monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    spec = lottalora.BackboneSpec(11, 4, in_features, out_features, init, version)
    t = _tensors(spec, rank)
    w = backbone_block(spec).double()
    want = torch.linalg.norm(0.8 * w + 0.7 * t["lora_B"].double() @ t["lora_A"].double(), dim=1)
    got = dora.weight_row_norms(spec, t["lora_A"], t["lora_B"], t["beta"], 0.7)
    assert got.dtype == torch.float32 and not got.requires_grad
    assert_close(got, want, torch.float32, "row norms")
    assert_close(dora.backbone_row_norms_squared(spec), w.square().sum(1), torch.float64, "||W_seed[o]||^2")
    no_adapter = dora.weight_row_norms(spec, None, None, t["beta"], 0.0)
    assert_close(no_adapter, 0.8 * torch.linalg.norm(w, dim=1), torch.float32, "row norms without adapter")


def test_row_norms_hold_where_the_adapter_nearly_cancels_a_row(monkeypatch):
    """Row 0 of beta W + s B A is 1% of beta W's: the expansion's float64 sums keep n accurate."""
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    spec = lottalora.BackboneSpec(4, 0, 6, 3, "gaussian", 1)
    w = backbone_block(spec)
    lora_A = w[:1].clone()
    lora_B = torch.tensor([[-0.99 * 0.8 / 0.5], [0.3], [0.0]])
    want = torch.linalg.norm(0.8 * w.double() + 0.5 * lora_B.double() @ lora_A.double(), dim=1)
    got = dora.weight_row_norms(spec, lora_A, lora_B, torch.tensor([0.8]), 0.5)
    assert_close(got, want, torch.float32, "row norms near cancellation")


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_norms_are_the_same_under_autocast(backend, monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    spec = lottalora.BackboneSpec(6, 2, 40, 9)
    t = _tensors(spec, 3)
    want = dora.weight_row_norms(spec, t["lora_A"], t["lora_B"], t["beta"], 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dora.weight_row_norms(spec, t["lora_A"], t["lora_B"], t["beta"], 0.5)
    assert torch.equal(got, want)


def test_row_norms_of_a_block_are_its_own_rows_over_its_columns():
    spec = lottalora.BackboneSpec(3, 0, 40, 20, "gaussian", 1)
    block = BackboneBlock(spec, (5, 17), (3, 31))
    w = backbone_block(spec, block.rows, block.cols).double()
    assert_close(dora.backbone_row_norms_squared(block), w.square().sum(1), torch.float64, "block norms")


def test_rademacher_rows_have_unit_norm_without_generation(monkeypatch):
    """Stream v2's rows are +-1/sqrt(in) exactly: the squared norm is in * std^2, with no
    backbone generated (a big layer costs nothing)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was generated")
    monkeypatch.setattr(dora, "dense_block", refuse)
    spec = lottalora.BackboneSpec(0, 0, 3 * 2**20, 2**16)
    norms = dora.backbone_row_norms_squared(spec)
    assert norms.shape == (2**16,)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-6, atol=0)


def test_generated_norms_are_chunked_and_cached(monkeypatch):
    calls = []
    real = dora.dense_block
    monkeypatch.setattr(dora, "dense_block", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    monkeypatch.setattr(dora, "ROW_NORM_CHUNK_VALUES", 64)
    spec = lottalora.BackboneSpec(99, 7, 20, 9, "gaussian", 1)
    first = dora.backbone_row_norms_squared(spec)
    assert calls == [(0, 3), (3, 6), (6, 9)]  # 3 rows of 20 values per chunk of 64
    assert dora.backbone_row_norms_squared(spec) is first and len(calls) == 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_features,out_features,init,version", BACKBONES)
@pytest.mark.parametrize("rank,use_rslora", [(1, False), (3, True), (4, False)])
def test_dora_linear_matches_peft_outputs_and_gradients(backend, in_features, out_features, init, version, rank,
                                                        use_rslora, monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    spec = lottalora.BackboneSpec(5, 2, in_features, out_features, init, version)
    alpha = 2.5
    scaling = alpha / (rank ** 0.5 if use_rslora else rank)
    t = {k: v.requires_grad_() for k, v in _tensors(spec, rank).items()}
    w = backbone_block(spec)
    model, layer = _peft_dora(t["beta"].detach() * w, t["bias"].detach(), t["lora_A"].detach(),
                              t["lora_B"].detach(), t["magnitude"].detach(), alpha, use_rslora)
    assert layer.scaling["default"] == pytest.approx(scaling)
    x_peft = t["x"].detach().clone().requires_grad_()
    y_peft = model(x_peft)
    y = dora.dora_linear(t["x"], spec, t["lora_A"], t["lora_B"], t["beta"], t["bias"], scaling, t["magnitude"])
    dy = torch.randn_like(y)
    y.backward(dy)
    y_peft.backward(dy)
    y64 = _dora_ref(t["x"], w, t["lora_A"], t["lora_B"], t["beta"], t["bias"], scaling, t["magnitude"])
    leaves = {k: v.detach().double().requires_grad_() for k, v in t.items()}
    ref = _dora_ref(leaves["x"], w, leaves["lora_A"], leaves["lora_B"], leaves["beta"], leaves["bias"], scaling,
                    leaves["magnitude"])
    ref.backward(dy.double())
    assert_close(y, y64, torch.float32, "y vs float64")
    assert_close(y, y_peft, torch.float32, "y vs PEFT")
    peft_grads = {"x": x_peft.grad, "lora_A": layer.lora_A["default"].weight.grad,
                  "lora_B": layer.lora_B["default"].weight.grad,
                  "magnitude": layer.lora_magnitude_vector["default"].weight.grad,
                  "bias": layer.base_layer.bias.grad}
    for name, grad in peft_grads.items():
        assert_close(t[name].grad, grad, torch.float32, f"d{name} vs PEFT")
        assert_close(t[name].grad, leaves[name].grad, torch.float32, f"d{name} vs float64")
    assert_close(t["beta"].grad, leaves["beta"].grad, torch.float32, "dbeta vs float64")


@pytest.mark.parametrize("backend", BACKENDS)
def test_dora_linear_with_dropout_matches_peft_training_and_eval(backend, monkeypatch):
    """Training with lora_dropout: PEFT feeds the dropped input to the DoRA term and the undropped
    one to the base output; eval (or no dropout) is the plain form. A fixed mask stands in for
    the random one on both sides."""
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    spec = lottalora.BackboneSpec(8, 1, 19, 11, "gaussian", 1)
    t = {k: v.requires_grad_() for k, v in _tensors(spec, 2).items()}
    mask = (torch.rand(t["x"].shape, generator=torch.Generator().manual_seed(3)) > 0.3).float() / 0.7
    w = backbone_block(spec)
    model, layer = _peft_dora(t["beta"].detach() * w, t["bias"].detach(), t["lora_A"].detach(),
                              t["lora_B"].detach(), t["magnitude"].detach(), 2.0, False, lora_dropout=0.3)

    class FixedMask(nn.Module):
        def forward(self, x):
            return x * mask

    layer.lora_dropout["default"] = FixedMask()
    model.train()
    x_peft = t["x"].detach().clone().requires_grad_()
    y_peft = model(x_peft)
    y = dora.dora_linear(t["x"], spec, t["lora_A"], t["lora_B"], t["beta"], t["bias"], 1.0, t["magnitude"],
                         lora_input=t["x"] * mask)
    leaves = {k: v.detach().double().requires_grad_() for k, v in t.items()}
    ref = _dora_ref(leaves["x"], w, leaves["lora_A"], leaves["lora_B"], leaves["beta"], leaves["bias"], 1.0,
                    leaves["magnitude"], lora_input=leaves["x"] * mask.double())
    dy = torch.randn_like(y)
    for out in (y, y_peft, ref):
        out.backward(dy.to(out.dtype))
    assert_close(y, y_peft, torch.float32, "training y vs PEFT")
    assert_close(y, ref, torch.float32, "training y vs float64")
    assert_close(t["x"].grad, x_peft.grad, torch.float32, "training dx vs PEFT")
    assert_close(t["magnitude"].grad, layer.lora_magnitude_vector["default"].weight.grad, torch.float32, "dm")
    assert_close(t["lora_A"].grad, layer.lora_A["default"].weight.grad, torch.float32, "dA")
    assert_close(t["beta"].grad, leaves["beta"].grad, torch.float32, "training dbeta vs float64")

    model.eval()
    with torch.no_grad():
        y_eval = dora.dora_linear(t["x"], spec, t["lora_A"], t["lora_B"], t["beta"], t["bias"], 1.0,
                                  t["magnitude"])
        assert_close(y_eval, model(t["x"]), torch.float32, "eval y vs PEFT")


def test_dora_linear_in_float64_is_the_reference_and_passes_gradcheck(monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    spec = lottalora.BackboneSpec(1, 1, 6, 5, "gaussian", 1)
    t = {k: v.requires_grad_() for k, v in _tensors(spec, 2, torch.float64, batch=(3,)).items()}
    w = backbone_block(spec)
    names = ["x", "lora_A", "lora_B", "beta", "bias", "magnitude"]
    assert_close(dora.dora_linear(t["x"], spec, *(t[n] for n in names[1:5]), 0.6, t["magnitude"]),
                 _dora_ref(*(t[n] for n in names[:1]), w, *(t[n] for n in names[1:5]), 0.6, t["magnitude"]),
                 torch.float64, "float64")

    def f(x, bias, magnitude):  # n depends on A, B and beta, and is detached: they stay fixed here
        return dora.dora_linear(x, spec, t["lora_A"], t["lora_B"], t["beta"], bias, 0.6, magnitude)

    assert torch.autograd.gradcheck(f, (t["x"], t["bias"], t["magnitude"]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dora_linear_in_half_precision_is_close_to_float64(dtype, monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    spec = lottalora.BackboneSpec(2, 3, 24, 10)
    t = _tensors(spec, 4, dtype)
    y = dora.dora_linear(t["x"], spec, t["lora_A"], t["lora_B"], t["beta"], t["bias"], 0.5, t["magnitude"])
    assert y.dtype == dtype
    want = _dora_ref(t["x"], backbone_block(spec), t["lora_A"], t["lora_B"], t["beta"], t["bias"], 0.5,
                     t["magnitude"])
    assert_close(y, want, dtype, f"{dtype} y")


def test_meta_inputs_give_meta_outputs():
    spec = lottalora.BackboneSpec(0, 0, 12, 7)
    t = {k: v.to("meta") for k, v in _tensors(spec, 2).items()}
    y = dora.dora_linear(t["x"], spec, t["lora_A"], t["lora_B"], t["beta"], t["bias"], 1.0, t["magnitude"])
    assert y.device.type == "meta" and y.shape == (3, 4, 7) and y.dtype == torch.float32


def test_a_magnitude_of_the_wrong_shape_is_refused_by_name():
    spec = lottalora.BackboneSpec(0, 0, 12, 7)
    t = _tensors(spec, 2)
    with pytest.raises(ValueError, match=r"magnitude must be a tensor of shape \(7,\), got \(6,\)"):
        dora.dora_linear(t["x"], spec, t["lora_A"], t["lora_B"], t["beta"], t["bias"], 1.0, t["magnitude"][:6])
