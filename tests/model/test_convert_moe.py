"""convert on transformers 5 MoE models, whose experts are 3-D parameters, not nn.Linear layers."""

import warnings

import pytest
import torch
from torch import nn

import lottalora
from tests.support.models import tiny_llama_config

transformers = pytest.importorskip("transformers")


def _mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    return MixtralForCausalLM(MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2, num_local_experts=4,
                                            num_experts_per_tok=2))


def _qwen2_moe():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    return Qwen2MoeForCausalLM(Qwen2MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                              moe_intermediate_size=16, shared_expert_intermediate_size=32,
                                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                              num_experts=4, num_experts_per_tok=2))


def _convert_warnings(model, **options) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lottalora.convert(model, rank=2, **options)
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("build,experts_class", [(_mixtral, "MixtralExperts"), (_qwen2_moe, "Qwen2MoeExperts")])
def test_experts_left_dense_and_frozen_are_warned_once_with_their_share(build, experts_class):
    # They were left dense and frozen silently: 82% of a tiny Mixtral's parameters.
    model = build()
    experts = model.model.layers[0].mlp.experts
    assert type(experts).__name__ == experts_class
    share = sum(p.numel() for p in experts.parameters()) / sum(p.numel() for p in model.parameters())
    messages = _convert_warnings(model)
    assert len(messages) == 1
    assert "model.layers.0.mlp.experts" in messages[0] and "gate_up_proj, down_proj" in messages[0]
    assert f"{share:.1%} of the model's parameters" in messages[0]
    assert "does not support seeded experts" in messages[0] and "trainable_modules=['experts']" in messages[0]
    assert not any(p.requires_grad for p in experts.parameters())
    assert isinstance(model.model.layers[0].self_attn.q_proj, lottalora.Linear)


def test_experts_named_in_trainable_modules_train_dense_without_a_warning():
    model = _mixtral()
    assert _convert_warnings(model, trainable_modules=["experts"]) == []
    assert all(p.requires_grad for p in model.model.layers[0].mlp.experts.parameters())


@pytest.mark.parametrize("target_modules", [["experts"], ["q_proj", "experts"], r".*\.experts"])
def test_naming_experts_in_target_modules_says_they_are_3d_experts(target_modules):
    # It said "matched no nn.Linear" (or nothing, beside a layer that did match).
    with pytest.raises(ValueError, match=r"names 'model.layers.0.mlp.experts', an MoE experts module "
                                         r"\(MixtralExperts\) holding its experts as 3-D parameters"):
        lottalora.convert(_mixtral(), rank=2, target_modules=target_modules)


def test_a_regex_that_reaches_the_experts_by_the_way_converts_the_rest_and_warns():
    model = _mixtral()
    messages = _convert_warnings(model, target_modules=r".*\.(self_attn\..*|experts)")
    assert len(messages) == 1 and "MoE experts" in messages[0]
    assert isinstance(model.model.layers[0].self_attn.o_proj, lottalora.Linear)


def _vit():
    from transformers import ViTConfig, ViTModel

    return ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                              image_size=8, patch_size=4))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16))


def _llama():
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(tiny_llama_config())


@pytest.mark.parametrize("build", [_llama, _gpt2, _vit])
def test_models_without_experts_warn_nothing(build):
    # ViT's (1, patches, hidden) position embeddings and its patch conv are 3-D too: not experts.
    assert _convert_warnings(build()) == []


def test_a_plain_module_named_experts_with_linear_layers_converts():
    # Experts as a list of MLPs (Switch Transformers' layout) are nn.Linear layers: they convert.
    model = nn.Sequential()
    model.experts = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
    assert _convert_warnings(model, target_modules=["experts.0", "experts.1", "experts.2"]) == []
    assert all(isinstance(m, lottalora.Linear) for m in model.experts)
    assert torch.isfinite(model.experts[0](torch.randn(2, 8))).all()
