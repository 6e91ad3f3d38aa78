"""Model tools on convolutions: convert names them, merge_and_unload gives nn.Conv back, summary
and reseed count them."""

import pytest
import torch
from torch import nn

import lottalora
from tests.support.tolerances import assert_close


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(2, 6, 3, padding=1)
        self.body = nn.Conv2d(6, 8, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2),
                              groups=2, bias=False, padding_mode="reflect")
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # x: (N, 2, 5 * 7)
        h = torch.relu(self.stem(x)).reshape(x.shape[0], 6, 5, 7)
        return self.head(self.body(h).mean((2, 3)))


def _converted(**options):
    torch.manual_seed(0)
    model = SmallCNN().double()
    dense = {n: (m.weight.clone(), None if m.bias is None else m.bias.clone()) for n, m in model.named_modules()
             if isinstance(m, (nn.Conv1d, nn.Conv2d))}
    lottalora.convert(model, **{"target_modules": ["stem", "body", "head"], "rank": 2, **options})
    return model, dense


def test_all_linear_leaves_convolutions_dense():
    model = SmallCNN()
    lottalora.convert(model, rank=2)
    assert isinstance(model.stem, nn.Conv1d) and isinstance(model.body, nn.Conv2d)
    assert isinstance(model.head, lottalora.Linear)


def test_convert_keeps_each_convs_geometry_and_bias():
    model, dense = _converted()
    stem, body = model.stem, model.body
    assert isinstance(stem, lottalora.Conv1d) and isinstance(body, lottalora.Conv2d)
    assert (body.in_channels, body.out_channels, body.kernel_size, body.stride, body.padding, body.dilation,
            body.groups, body.padding_mode) == (6, 8, (3, 2), (2, 1), (1, 1), (1, 2), 2, "reflect")
    assert body.bias is None and torch.equal(stem.bias, dense["stem"][1]) and stem.bias.requires_grad
    assert stem.stream == lottalora.stream_for_name("stem") and body.lora_A.shape == (2, 3, 3, 2)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora" not in n and "beta" not in n
                   and "bias" not in n)


def test_merge_and_unload_gives_nn_conv_back_with_the_same_function():
    model, _ = _converted()
    with torch.no_grad():
        for layer in lottalora.nn.seeded_layers(model).values():
            layer.lora_B.normal_()
            layer.beta.fill_(0.8)
    x = torch.randn(3, 2, 35, dtype=torch.float64)
    want = model(x)
    lottalora.merge_and_unload(model)
    assert type(model.stem) is nn.Conv1d and type(model.body) is nn.Conv2d and type(model.head) is nn.Linear
    assert model.body.padding_mode == "reflect" and model.body.groups == 2
    assert_close(model(x), want, torch.float64, "merged")


def test_summary_and_reseed_know_convolutions():
    model, _ = _converted()
    s = lottalora.summary(model)
    assert s["seeded_layers"] == 3
    assert s["backbone_params"] == 6 * 2 * 3 + 8 * 3 * 3 * 2 + 3 * 8
    # The values lora_A and lora_B hold: body's grouped lora_B is (8, rank // groups, 1, 1).
    assert s["adapter_params"] == (2 * 6 + 6 * 2) + (2 * 18 + 8 * 1) + (2 * 8 + 3 * 2)
    assert s["adapter_params"] == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    x = torch.randn(2, 2, 35, dtype=torch.float64)
    before = model(x)
    lottalora.reseed(model, 77)
    assert model.stem.seed == model.body.seed == 77
    assert not torch.allclose(model(x), before)


def test_convert_with_dora_makes_dora_convs_and_leaves_rank_0_ones_plain():
    model, _ = _converted(use_dora=True, rank_pattern={"stem": 0})
    assert model.body.use_dora and model.head.use_dora and not model.stem.use_dora
    assert model.body.lora_magnitude.shape == (8,) and model.body.lora_magnitude.requires_grad
    assert isinstance(model.stem, lottalora.Conv1d) and model.stem.lora_magnitude is None


def test_named_adapters_on_convs_are_refused_before_anything_changes():
    model, _ = _converted()
    with pytest.raises(NotImplementedError, match="exclude_modules"):
        lottalora.add_adapter(model, "second", rank=2)
    assert lottalora.list_adapters(model) == ["default"]
    lottalora.add_adapter(model, "second", rank=2, exclude_modules=["stem", "body"])
    assert lottalora.list_adapters(model) == ["default", "second"]


def test_a_cnn_built_on_meta_converts_and_materializes():
    with torch.device("meta"):
        model = SmallCNN()
    lottalora.convert(model, target_modules=["stem", "body"], rank=2)
    assert model.body.lora_A.device.type == "meta"
    lottalora.materialize(model, "cpu")
    assert model.body.lora_A.abs().sum() > 0 and torch.equal(model.body.lora_B, torch.zeros_like(model.body.lora_B))
    assert model(torch.randn(2, 2, 35)).shape == (2, 3)


def test_a_conv_that_refuses_its_rank_leaves_the_model_as_it_was():
    """convert builds every seeded layer before it places one: the grouped conv's refusal comes
    before the linear beside it is replaced, so a corrected call converts and freezes as a first."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Conv1d(8, 8, 3, groups=2), torch.nn.Linear(8, 8))
    with pytest.raises(ValueError, match="multiple of groups"):
        lottalora.convert(model, rank=3, target_modules=["0", "1"])
    assert type(model[0]) is torch.nn.Linear and type(model[1]) is torch.nn.Conv1d
    lottalora.convert(model, rank=2, target_modules=["0", "1"])
    assert not any(p.requires_grad for p in model[2].parameters())
