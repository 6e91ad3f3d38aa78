"""lottalora.convert and materialize: which layers change, what trains, streams from names."""

import pytest
import torch
from torch import nn

import lottalora
from lottalora.convert import name_matches

from .models import LLAMA_ADAPTERS, converted_tiny_llama

transformers = pytest.importorskip("transformers")


class TwoTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 16)
        self.encoder = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 4)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)))


def test_all_linears_are_converted_by_default_and_biases_kept():
    model = TwoTower()
    bias = model.encoder[0].bias.detach().clone()
    lottalora.convert(model, rank=2)
    assert all(isinstance(m, lottalora.Linear) for m in (model.encoder[0], model.encoder[2], model.head))
    assert torch.equal(model.encoder[0].bias, bias)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "embed.weight" not in trainable
    assert {"head.lora_A", "head.lora_B", "head.beta", "head.bias"} <= trainable


def test_targets_adapters_and_trainable_modules():
    model = TwoTower()
    lottalora.convert(model, rank=3, target_modules=["encoder.0", "encoder.2"], adapter_modules=r"encoder\.0",
                      trainable_modules=["embed", "head"])
    assert model.encoder[0].rank == 3 and model.encoder[2].rank == 0
    assert isinstance(model.head, nn.Linear) and not isinstance(model.head, lottalora.Linear)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"embed.weight", "head.weight", "head.bias", "encoder.0.lora_A", "encoder.0.lora_B",
                         "encoder.0.beta", "encoder.0.bias", "encoder.2.beta", "encoder.2.bias"}


def test_name_matching_follows_peft():
    assert name_matches("model.layers.0.self_attn.q_proj", ["q_proj"])
    assert not name_matches("model.layers.0.self_attn.qq_proj", ["q_proj"])
    assert name_matches("model.layers.3.mlp.up_proj", r".*mlp\.(up|down)_proj")
    assert not name_matches("model.layers.3.mlp.up_proj", r"mlp\.up_proj")  # a regex must match the whole name


def test_streams_come_from_names_and_two_conversions_agree():
    a = lottalora.convert(TwoTower(), rank=2, seed=5)
    b = lottalora.convert(TwoTower(), rank=2, seed=5)
    for name in ("encoder.0", "encoder.2", "head"):
        la, lb = a.get_submodule(name), b.get_submodule(name)
        assert la.stream == lb.stream == lottalora.stream_for_name(name)
        assert torch.equal(la.backbone_weight(), lb.backbone_weight())
    assert len({a.encoder[0].stream, a.encoder[2].stream, a.head.stream}) == 3


def test_stream_for_name_is_pinned():
    # sha256("lottalora/stream/v1:" + name)[:8], little-endian: part of the checkpoint format.
    assert lottalora.stream_for_name("model.layers.0.self_attn.q_proj") == 143193958444802268
    import hashlib
    want = int.from_bytes(hashlib.sha256(b"lottalora/stream/v1:head").digest()[:8], "little")
    assert lottalora.stream_for_name("head") == want


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(target_modules=["nothing"]), ValueError, "matched no nn.Linear"),
    (dict(target_modules="("), ValueError, "target_modules is not a valid regular expression"),
    (dict(adapter_modules=["nothing"]), ValueError, "adapter_modules"),
    (dict(trainable_modules=["head"]), ValueError, "both conversion targets and trainable_modules"),
    (dict(target_modules=3), TypeError, "target_modules"),
    (dict(rank=-1), ValueError, "rank"),
])
def test_bad_conversion_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        lottalora.convert(TwoTower(), **kwargs)


def test_llama_recipe_converts_attention_with_adapters_and_mlp_without():
    model = converted_tiny_llama()
    layer = model.model.layers[0]
    assert all(getattr(layer.self_attn, n).rank == 4 for n in LLAMA_ADAPTERS)
    assert all(getattr(layer.mlp, n).rank == 0 for n in ("gate_proj", "up_proj", "down_proj"))
    assert not isinstance(model.lm_head, lottalora.Linear)
    ids = torch.randint(0, 96, (2, 7))
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert layer.self_attn.q_proj.lora_A.grad is not None and model.model.embed_tokens.weight.grad is not None


def test_meta_built_model_materializes_without_dense_weights_and_runs():
    model = converted_tiny_llama(meta=True)
    assert all(t.device.type == "cpu" for t in list(model.parameters()) + list(model.buffers()))
    rotary = model.model.rotary_emb
    want = 1.0 / (rotary.config.rope_parameters["rope_theta"] ** (torch.arange(0, 12, 2).float() / 12))
    assert torch.allclose(rotary.inv_freq, want)
    norm = model.model.layers[0].input_layernorm.weight
    assert torch.equal(norm, torch.ones_like(norm))
    logits = model(torch.randint(0, 96, (1, 5))).logits
    assert torch.isfinite(logits).all()


def test_gpt2_conv1d_is_handled():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    lottalora.convert(model, rank=2, target_modules=["c_attn", "c_proj", "c_fc"])
    attn = model.transformer.h[0].attn.c_attn
    assert isinstance(attn, lottalora.Linear) and (attn.in_features, attn.out_features) == (32, 96)
    assert torch.isfinite(model(torch.randint(0, 50, (1, 6))).logits).all()
