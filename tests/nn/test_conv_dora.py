"""DoRA on seeded convolutions: held against PEFT's conv DoRA on the dense backbone (groups=1,
PEFT's shapes) and against a float64 reference of the formula (groups, padding modes); meta,
checkpoints, merge_and_unload."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lottalora
from tests.support.tolerances import assert_close

CONV = {1: F.conv1d, 2: F.conv2d}


def _dora_conv(dims, in_ch, out_ch, kernel, options, dtype=torch.float32):
    """A DoRA conv with a random lora_B, beta and magnitude (a trained layer's state)."""
    cls = (lottalora.Conv1d, lottalora.Conv2d)[dims - 1]
    layer = cls(in_ch, out_ch, kernel, **{"rank": 4, "alpha": 6, "use_dora": True, **options}, dtype=dtype)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.beta.fill_(0.7)
        layer.lora_magnitude.mul_(torch.rand_like(layer.lora_magnitude) + 0.5)
    return layer


def _peft_twin(layer):
    """PEFT's DoRA conv on an nn.Conv holding beta * W_seed, with the layer's A, B, m and bias."""
    peft = pytest.importorskip("peft")
    dims = layer.dims
    dense = (nn.Conv1d, nn.Conv2d)[dims - 1](
        layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
        layer.groups, bias=layer.bias is not None, padding_mode=layer.padding_mode)
    with torch.no_grad():
        dense.weight.copy_(layer.backbone_weight() * layer.beta)
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
    model = peft.get_peft_model(nn.Sequential(dense), peft.LoraConfig(
        r=layer.rank, lora_alpha=layer.alpha, target_modules=["0"], use_dora=True,
        lora_dropout=layer.lora_dropout))
    twin = model.base_model.model[0]
    if layer.bias is not None:
        twin.base_layer.bias.requires_grad_(True)  # PEFT's bias="none" freezes it; compare its gradient
    with torch.no_grad():
        twin.lora_A["default"].weight.copy_(layer.lora_A)
        twin.lora_B["default"].weight.copy_(layer.lora_B)
        twin.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude.view(1, -1, *(1,) * dims))
    return model, twin


@pytest.mark.parametrize("dims,kernel,options", [
    (1, 3, dict(padding=1)),
    (1, 4, dict(stride=2, bias=False)),  # no dilation: PEFT's lora_A conv does not take the layer's
    (2, (3, 2), dict(padding=(1, 0), stride=(1, 2))),
    (2, 1, dict(lora_dropout=0.3)),
])
def test_matches_peft_dora_in_outputs_and_gradients(dims, kernel, options):
    torch.manual_seed(0)
    layer = _dora_conv(dims, 3, 5, kernel, options)
    model, twin = _peft_twin(layer)
    layer.train(), model.train()
    x = torch.randn(2, 3, *(9, 7)[:dims])
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    dy = torch.randn_like(model(x))
    torch.manual_seed(1)  # the same dropout mask: both draw one mask of x's shape
    y_peft = model(xs[0])
    torch.manual_seed(1)
    y = layer(xs[1])
    assert_close(y, y_peft, torch.float32, "output")
    (y_peft * dy).sum().backward()
    (y * dy).sum().backward()
    pairs = [(xs[1].grad, xs[0].grad, "x"), (layer.lora_A.grad, twin.lora_A["default"].weight.grad, "lora_A"),
             (layer.lora_B.grad, twin.lora_B["default"].weight.grad, "lora_B"),
             (layer.lora_magnitude.grad, twin.lora_magnitude_vector["default"].weight.grad.flatten(), "magnitude")]
    if layer.bias is not None:
        pairs.append((layer.bias.grad, twin.base_layer.bias.grad, "bias"))
    for ours, theirs, what in pairs:
        assert_close(ours, theirs, torch.float32, what)


def _reference(layer, x):
    """(m / n) * (beta conv(pad(x), W_seed) + s conv(conv(pad(x), A), B)) + bias in float64, n
    the detached per-channel norm of the merged weight matrix."""
    conv = CONV[layer.dims]
    w = layer.backbone_weight(torch.float64)
    a, b, beta, m = (t.double() for t in (layer.lora_A, layer.lora_B, layer.beta, layer.lora_magnitude))
    padded = layer.pad(x)
    merged = beta * w + layer.delta_weight().double()
    n = merged.flatten(1).norm(dim=1).detach()
    g = layer.groups
    adapted = beta * conv(padded, w, None, layer.stride, 0, layer.dilation, g)
    adapted = adapted + layer.scaling * conv(conv(padded, a, None, layer.stride, 0, layer.dilation, g), b,
                                             groups=g)
    shape = (1, -1, *(1,) * layer.dims)
    y = (m / n).view(shape) * adapted
    return y + layer.bias.double().view(shape) if layer.bias is not None else y


@pytest.mark.parametrize("dims,in_ch,out_ch,kernel,options", [
    (1, 6, 4, 3, dict(groups=2, padding=2, padding_mode="circular", dilation=2, stride=2)),
    (2, 4, 6, (2, 3), dict(groups=2, padding=1, padding_mode="reflect", dilation=(2, 1))),
    (2, 3, 3, 3, dict(groups=3, rank=3, padding="same", padding_mode="replicate", bias=False)),
])
def test_matches_a_float64_reference_with_groups_and_padding_modes(dims, in_ch, out_ch, kernel, options):
    torch.manual_seed(2)
    layer = _dora_conv(dims, in_ch, out_ch, kernel, options, dtype=torch.float64)
    x = torch.randn(2, in_ch, *(8, 7)[:dims], dtype=torch.float64, requires_grad=True)
    params = [p for p in (layer.lora_A, layer.lora_B, layer.beta, layer.lora_magnitude, layer.bias) if p is not None]
    y = layer(x)
    y_ref = _reference(layer, x)
    assert_close(y, y_ref, torch.float64, "output")
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *params], dy)
    grads_ref = torch.autograd.grad(y_ref, [x, *params], dy)
    for ours, ref, what in zip(grads, grads_ref, ["x", "lora_A", "lora_B", "beta", "magnitude", "bias"]):
        assert_close(ours, ref, torch.float64, what)


def test_magnitude_starts_at_the_backbone_row_norms_and_the_output_is_the_plain_convs():
    torch.manual_seed(3)
    layer = lottalora.Conv2d(4, 6, 3, groups=2, rank=2, use_dora=True, padding=1)
    plain = lottalora.Conv2d(4, 6, 3, groups=2, rank=2, padding=1)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "lora_magnitude"})
    assert_close(layer.lora_magnitude, layer.backbone_weight().flatten(1).norm(dim=1), torch.float32, "m")
    x = torch.randn(2, 4, 5, 6)
    assert_close(layer(x), plain(x).double(), torch.float32, "B = 0: m / n = 1")
    assert "use_dora=True" in repr(layer)


def test_builds_and_runs_on_meta_with_the_magnitude_in_the_state_dict():
    with torch.device("meta"):
        layer = lottalora.Conv1d(3, 5, 3, rank=2, use_dora=True)
        y = layer(torch.randn(2, 3, 9))
    assert y.device.type == "meta" and y.shape == (2, 5, 7)
    assert layer.state_dict()["lora_magnitude"].shape == (5,)


class DoraCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(2, 6, 3, padding=1, padding_mode="replicate")
        self.body = nn.Conv2d(6, 4, 3, padding=1, groups=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):  # x: (N, 2, 5 * 7)
        h = torch.relu(self.stem(x)).reshape(x.shape[0], 6, 5, 7)
        return self.head(self.body(h).mean((2, 3)))


def _converted_cnn(seed):
    torch.manual_seed(seed)
    model = lottalora.convert(DoraCNN(), target_modules=["stem", "body", "head"], rank=2, seed=seed, use_dora=True)
    with torch.no_grad():
        for layer in lottalora.nn.seeded_layers(model).values():
            layer.lora_B.normal_()
            layer.lora_magnitude.mul_(1.5)
    return model


def test_convert_with_dora_trains_the_magnitudes_and_summary_counts_them():
    model = _converted_cnn(0)
    assert model.stem.use_dora and model.body.use_dora and model.head.use_dora
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"stem.lora_magnitude", "body.lora_magnitude", "head.lora_magnitude"} <= names
    model(torch.randn(2, 2, 35)).sum().backward()
    assert model.body.lora_magnitude.grad.abs().sum() > 0
    s = lottalora.summary(model)
    assert s["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("adapter", [None, "default"])
def test_checkpoint_round_trip_carries_dora_convs(tmp_path, adapter):
    pytest.importorskip("safetensors")
    model = _converted_cnn(5)
    lottalora.save(model, tmp_path / "ck", adapter=adapter)
    fresh = _converted_cnn(5 if adapter else 9)
    with torch.no_grad():
        fresh.body.lora_magnitude.fill_(1.0)
    lottalora.load(fresh, tmp_path / "ck")
    x = torch.randn(2, 2, 35)
    assert torch.equal(fresh.body.lora_magnitude, model.body.lora_magnitude)
    assert torch.equal(fresh(x), model(x))
    plain = lottalora.convert(DoraCNN(), target_modules=["stem", "body", "head"], rank=2, seed=5)
    with pytest.raises(ValueError, match="DoRA"):
        lottalora.load(plain, tmp_path / "ck")


def test_merge_and_unload_of_dora_convs_computes_the_same_function():
    model = _converted_cnn(1).double()
    x = torch.randn(3, 2, 35, dtype=torch.float64)
    want = model(x)
    lottalora.merge_and_unload(model)
    assert type(model.stem) is nn.Conv1d and type(model.body) is nn.Conv2d and type(model.head) is nn.Linear
    assert_close(model(x), want, torch.float64, "merged")
