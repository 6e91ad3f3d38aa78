"""Checkpoints of models with seeded convolutions: the seeds, streams and options come back."""

import pytest
import torch

import lottalora
from tests.model.test_conv_models import SmallCNN

pytest.importorskip("safetensors")


def _trained(seed=0):
    torch.manual_seed(seed)
    model = lottalora.convert(SmallCNN(), target_modules=["stem", "body", "head"], rank=2, seed=seed,
                              use_rslora=True)
    with torch.no_grad():
        for layer in lottalora.nn.seeded_layers(model).values():
            layer.lora_B.normal_()
            layer.beta.fill_(0.9)
    return model


@pytest.mark.parametrize("trainable_only", [False, True])
def test_save_and_load_restore_conv_layers(tmp_path, trainable_only):
    model = _trained(seed=5)
    lottalora.save(model, tmp_path / "ck", trainable_only=trainable_only)
    fresh = _trained(seed=9)
    lottalora.load(fresh, tmp_path / "ck")
    x = torch.randn(2, 2, 35)
    assert fresh.stem.seed == 5 and fresh.body.use_rslora
    assert torch.equal(fresh(x), model(x))


def test_an_adapter_checkpoint_loads_into_conv_layers(tmp_path):
    model = _trained(seed=5)
    lottalora.save(model, tmp_path / "ad", adapter="default")
    fresh = _trained(seed=5)
    with torch.no_grad():
        fresh.body.lora_A.zero_()
    lottalora.load(fresh, tmp_path / "ad")
    assert torch.equal(fresh.body.lora_A, model.body.lora_A)


def test_a_checkpoint_refuses_a_conv_of_another_shape(tmp_path):
    model = _trained()
    lottalora.save(model, tmp_path / "ck")
    other = SmallCNN()
    other.body = torch.nn.Conv2d(6, 8, 3, padding=1, groups=2)
    lottalora.convert(other, target_modules=["stem", "body", "head"], rank=2)
    with pytest.raises(ValueError, match="body"):
        lottalora.load(other, tmp_path / "ck")


def test_a_model_with_seeded_convs_and_a_dora_linear_round_trips(tmp_path):
    def build(seed):
        torch.manual_seed(seed)
        model = lottalora.convert(SmallCNN(), target_modules=["stem", "body"], rank=2, seed=seed)
        return lottalora.convert(model, target_modules=["head"], rank=2, seed=seed, use_dora=True)

    model = build(5)
    with torch.no_grad():
        model.head.lora_B.normal_()
        model.body.lora_B.normal_()
    lottalora.save(model, tmp_path / "ck")
    fresh = build(9)
    lottalora.load(fresh, tmp_path / "ck")
    x = torch.randn(2, 2, 35)
    assert fresh.body.seed == 5 and fresh.head.use_dora and not fresh.body.use_dora
    assert torch.equal(fresh(x), model(x))


def test_a_checkpoint_of_grouped_convs_summarises_like_the_live_model(tmp_path):
    model = _trained(seed=3)
    lottalora.save(model, tmp_path / "ck")
    live, stored = lottalora.summary(model), lottalora.summary(tmp_path / "ck")
    assert stored["adapter_params"] == live["adapter_params"] == sum(
        p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert stored["layers"] == live["layers"]


def test_from_pretrained_rebuilds_dora_convs(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1],
                                       layer_type="basic", num_labels=3)
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(config)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    lottalora.convert(model, target_modules=convs, rank=2, use_dora=True)
    with torch.no_grad():
        for layer in lottalora.nn.seeded_layers(model).values():
            layer.lora_B.normal_()
            layer.lora_magnitude.mul_(1.2)
    x = torch.randn(2, 3, 16, 16)
    want = model.eval()(x).logits
    lottalora.save(model, tmp_path / "ck")
    rebuilt = lottalora.from_pretrained(tmp_path / "ck")
    stem = rebuilt.resnet.embedder.embedder.convolution
    assert isinstance(stem, lottalora.Conv2d) and stem.use_dora
    assert torch.equal(rebuilt(x).logits, want)


@pytest.mark.parametrize("other", [lambda: lottalora.Conv2d(3, 8, (1, 3), rank=0, seed=4),
                                   lambda: lottalora.Linear(9, 8, rank=0, seed=4)])
def test_a_rank_0_conv_checkpoint_refuses_another_kernel_of_the_same_matrix(tmp_path, other):
    """A (3, 1) kernel, a (1, 3) one and a Linear share the (8, 9) backbone matrix: the layer
    entry's weight_shape tells them apart, where a rank-0 layer has no adapter shape to."""
    saved = torch.nn.Sequential(lottalora.Conv2d(3, 8, (3, 1), rank=0, seed=4))
    lottalora.save(saved, tmp_path / "ck")
    with pytest.raises(ValueError, match=r"weight shape \(8, 3, 3, 1\) in the checkpoint"):
        lottalora.load(torch.nn.Sequential(other()), tmp_path / "ck")
    fresh = torch.nn.Sequential(lottalora.Conv2d(3, 8, (3, 1), rank=0, seed=4))
    lottalora.load(fresh, tmp_path / "ck")


def test_a_named_adapter_onto_convs_is_refused_before_any_layer_changes(tmp_path):
    model = _trained(seed=5)
    lottalora.save(model, tmp_path / "ad", adapter="default")
    fresh = _trained(seed=5)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="'(stem|body)' is a seeded convolution.*adapter='default'"):
        lottalora.load(fresh, tmp_path / "ad", adapter="other")
    assert fresh.head.adapter_names() == ["default"]  # the Linear got no half-loaded adapter
    after = fresh.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_whole_checkpoint_listing_named_adapters_on_a_conv_is_refused_before_any_layer_changes(tmp_path):
    """Not something save writes (convs hold no named adapters), but a file edited by hand must be
    refused before the Linear's named adapter is added."""
    from tests.support.checkpoints import assert_unchanged, edit_config, snapshot

    model = _trained(seed=5)
    lottalora.add_adapter(model, "extra", rank=1, target_modules=["head"])
    lottalora.save(model, tmp_path / "ck")
    entry = {"rank": 1, "alpha": 1.0, "use_rslora": False, "scaling": 1.0, "lora_dropout": 0.0}

    def add_to_conv(config):
        (body,) = [layer for layer in config["layers"] if layer["name"] == "body"]
        body["adapters"] = {"extra": entry}
    edit_config(tmp_path / "ck", add_to_conv)
    fresh = _trained(seed=9)
    before = snapshot(fresh)
    with pytest.raises(ValueError, match="'body' is a seeded convolution.*'extra'"):
        lottalora.load(fresh, tmp_path / "ck")
    assert_unchanged(fresh, before)
    assert fresh.head.adapter_names() == ["default"]
