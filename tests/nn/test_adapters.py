"""Named adapters on one seeded layer: their keys, the active one, a batch whose rows pick
theirs over one backbone product, and PEFT's init_lora_weights."""

import math

import pytest
import torch

import lottalora
import lottalora.nn.linear as linear_module
from lottalora.ops import seeded_linear_ref
from tests.support.tolerances import assert_close


def _layer(dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    layer = lottalora.Linear(17, 11, rank=4, alpha=6.0, seed=3, stream=1, dtype=dtype, **kwargs)
    layer.add_adapter("french", rank=2, alpha=3.0)
    layer.add_adapter("german", rank=3, use_rslora=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()  # off the init: B = 0 would hide an adapter that is not added
    return layer


def _reference(layer, x, name):
    """float64: beta * x @ W^T + bias, plus adapter ``name``'s term (None: no adapter)."""
    parts = None if name in (None, "__base__") else layer.adapter_parts(name)
    a, b, scale = (None, None, 0.0) if parts is None else (parts.lora_A, parts.lora_B, parts.scaling)
    return seeded_linear_ref(x, layer.spec, a, b, layer.beta, layer.bias, scale)


def test_named_adapters_keep_the_default_keys_and_add_their_own():
    layer = _layer()
    keys = list(layer.state_dict())
    assert keys[:5] == ["lora_A", "lora_B", "beta", "bias", "_extra_state"]
    assert keys[5:] == [f"lora_adapters.{n}.{k}" for n in ("french", "german") for k in ("lora_A", "lora_B",
                                                                                           "_extra_state")]
    assert layer.adapter_names() == ["default", "french", "german"]
    french = layer.named_adapters["french"]
    assert french.lora_A.shape == (2, 17) and not french.lora_A.requires_grad
    plain = lottalora.Linear(17, 11, rank=4)
    assert "lora_adapters" not in dict(plain.named_children())  # nothing new on a layer without named adapters


@pytest.mark.parametrize("name", ["default", "french", "german", None])
def test_the_active_adapter_is_the_one_the_forward_adds(name):
    layer = _layer(torch.float64)
    x = torch.randn(2, 5, 17, dtype=torch.float64)
    layer.set_adapter(name)
    assert_close(layer(x), _reference(layer, x, name), torch.float64, f"active {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_mixed_batch_runs_each_rows_adapter_over_one_backbone_product(dtype, monkeypatch):
    layer = _layer(dtype)
    names = ["german", "__base__", "default", "german", "french", "default", "french"]
    x = torch.randn(len(names), 3, 17, dtype=dtype)
    calls = []
    real = linear_module.seeded_linear
    monkeypatch.setattr(linear_module, "seeded_linear", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    out = layer(x, adapter_names=names)
    assert len(calls) == 1 and calls[0] is None  # one backbone product, no adapter fused in it
    for i, name in enumerate(names):
        assert_close(out[i], _reference(layer, x[i:i + 1].double(), name)[0], dtype, f"row {i} ({name})")


def test_a_mixed_batch_gives_each_adapter_the_gradient_of_its_own_rows():
    layer = _layer(torch.float64)
    for p in layer.parameters():
        p.requires_grad_(True)
    names = ["french", "default", "french", "__base__"]
    x = torch.randn(4, 17, dtype=torch.float64)
    dy = torch.randn(4, 11, dtype=torch.float64)
    (layer(x, adapter_names=names) * dy).sum().backward()
    mixed = {n: None if p.grad is None else p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    for i, name in enumerate(names):
        layer.set_adapter(None if name == "__base__" else name)
        (layer(x[i:i + 1]) * dy[i:i + 1]).sum().backward()
    for n, p in layer.named_parameters():
        want = p.grad if p.grad is not None else torch.zeros_like(p)
        got = mixed[n] if mixed[n] is not None else torch.zeros_like(p)
        assert_close(got, want, torch.float64, n)
    assert mixed["lora_adapters.german.lora_A"] is None  # no row picked it


def test_a_mixed_batch_refuses_names_it_cannot_place():
    layer = _layer()
    x = torch.randn(3, 17)
    with pytest.raises(ValueError, match="adapter_names has 2 names but the input has shape"):
        layer(x, adapter_names=["default", "french"])
    with pytest.raises(ValueError, match=r"names \['spanish'\], which this layer does not hold"):
        layer(x, adapter_names=["default", "spanish", "french"])
    with pytest.raises(TypeError, match="list of adapter names"):
        layer(x, adapter_names="french")


def test_adapter_names_and_deletion_are_checked():
    layer = _layer()
    for bad in ("1st", "a.b", "__base__", "", 3):
        with pytest.raises(ValueError, match="adapter name must be an identifier"):
            layer.add_adapter(bad, rank=2)
    with pytest.raises(ValueError, match="already has an adapter 'french'"):
        layer.add_adapter("french", rank=2)
    with pytest.raises(ValueError, match="needs rank >= 1"):
        layer.add_adapter("zero", rank=0)
    with pytest.raises(ValueError, match="cannot be deleted"):
        layer.delete_adapter("default")
    layer.set_adapter("french")
    layer.delete_adapter("french")
    assert layer.active_adapter == "default" and layer.adapter_names() == ["default", "german"]
    layer.delete_adapter("german")
    assert "lora_adapters" not in dict(layer.named_children())
    with pytest.raises(KeyError, match="no adapter 'german'"):
        layer.set_adapter("german")


def test_a_state_dict_with_named_adapters_loads_all_or_nothing():
    src = _layer()
    dst = lottalora.Linear(17, 11, rank=4, seed=3, stream=1)
    dst.add_adapter("french", rank=2)
    dst.add_adapter("german", rank=3)
    dst.load_state_dict(src.state_dict())
    assert (dst.named_adapters["french"].alpha, dst.named_adapters["german"].use_rslora) == (3.0, True)
    assert torch.equal(dst.named_adapters["german"].lora_B, src.named_adapters["german"].lora_B)
    bad = lottalora.Linear(17, 11, rank=4, seed=3, stream=1)
    bad.add_adapter("french", rank=2)
    bad.add_adapter("german", rank=5)
    before = {k: v.clone() for k, v in bad.state_dict().items()}
    with pytest.raises(ValueError, match="adapter 'german'"):
        bad.load_state_dict(src.state_dict())
    assert all(torch.equal(v, bad.state_dict()[k]) for k, v in before.items())


def test_init_lora_weights_follows_peft():
    torch.manual_seed(0)
    kaiming = lottalora.Linear(400, 300, rank=16)
    assert not kaiming.lora_B.any() and kaiming.lora_A.abs().max() <= 1 / math.sqrt(400)
    gaussian = lottalora.Linear(400, 300, rank=16, init_lora_weights="gaussian")
    assert not gaussian.lora_B.any() and abs(gaussian.lora_A.std().item() - 1 / 16) < 0.005
    random_b = lottalora.Linear(400, 300, rank=16, init_lora_weights=False)
    assert random_b.lora_B.any() and random_b.lora_B.abs().max() <= 1 / math.sqrt(16)
    orthogonal = lottalora.Linear(400, 300, rank=16, init_lora_weights="orthogonal")
    assert orthogonal.lora_A.any() and orthogonal.lora_B.any()
    assert (orthogonal.lora_B @ orthogonal.lora_A).abs().max() < 1e-6  # starts at the backbone
    with pytest.raises(ValueError, match="needs an even rank"):
        lottalora.Linear(40, 30, rank=3, init_lora_weights="orthogonal")
    assert "init_lora_weights='gaussian'" in repr(gaussian)


@pytest.mark.parametrize("value,reason", [
    ("pissa", "principal singular vectors of the pretrained weight W0"),
    ("pissa_niter_4", "principal singular vectors"),
    ("olora", "QR decomposition of the pretrained weight W0"),
    ("loftq", "quantization error of the pretrained weight W0"),
    ("corda", "activation covariance"),
    ("eva", "pretrained model's activations"),
])
def test_inits_that_decompose_a_pretrained_weight_are_refused_with_the_reason(value, reason):
    with pytest.raises(ValueError, match=f"init_lora_weights={value!r} is refused: .*{reason}.*no pretrained W0"):
        lottalora.Linear(8, 8, rank=2, init_lora_weights=value)
    with pytest.raises(ValueError, match="must be one of"):
        lottalora.Linear(8, 8, rank=2, init_lora_weights="kaiming")


_FLAGS = {  # where each flag is taken: a builder of one keyword argument
    "Linear": (lambda **kw: lottalora.Linear(4, 3, **kw), ("use_rslora", "bias", "train_beta")),
    "Conv2d": (lambda **kw: lottalora.Conv2d(4, 3, 3, **kw), ("use_rslora", "bias", "train_beta")),
    "convert": (lambda **kw: lottalora.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), **kw),
                ("use_rslora", "train_beta")),  # convert's bias is a mode, checked by name elsewhere
    "add_adapter": (lambda **kw: lottalora.Linear(4, 3).add_adapter("fr", rank=2, **kw), ("use_rslora",)),
}


@pytest.mark.parametrize("where,flag", [(w, f) for w, (_, flags) in _FLAGS.items() for f in flags])
def test_a_flag_that_is_not_a_bool_is_refused_by_name(where, flag):
    """A string such as "no" is truthy: taken as it was, it turned the option on."""
    with pytest.raises(TypeError, match=f"{flag} must be a bool, got 'no'"):
        _FLAGS[where][0](**{flag: "no"})


def test_the_output_of_a_3d_input_can_be_modified_in_place_as_nn_linears():
    """A view made inside the custom autograd Function could not be (Falcon's `mlp_output +=
    attention_output`, ReLU(inplace=True) after a layer on (batch, sequence, features))."""
    torch.manual_seed(0)
    layer = lottalora.Linear(6, 5, rank=2, seed=1)
    x = torch.randn(2, 3, 6, requires_grad=True)
    residual = torch.randn(2, 3, 5)
    y = layer(x)
    y += residual
    torch.nn.functional.relu(y, inplace=True).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    w = layer.beta.detach() * layer.backbone_weight() + layer.scaling * layer.lora_B.detach() @ layer.lora_A.detach()
    torch.relu(torch.nn.functional.linear(x_ref, w, layer.bias.detach()) + residual).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
