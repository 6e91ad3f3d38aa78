"""Betas that only act as a product with another layer's are found from the traced graph, and
convert freezes them; nothing else is frozen."""

import pytest
import torch
from torch import nn

import lottalora
from lottalora.model.redundant_betas import find_redundant_betas
from tests.support.models import LLAMA_ADAPTERS, LLAMA_TARGETS, LLAMA_TRAINABLE, converted_tiny_llama, tiny_llama_config


class GatedMLP(nn.Module):
    """LLaMA's MLP: down(act(gate(x)) * up(x)), optionally with dropout before down."""

    def __init__(self, bias: bool = False, dropout: float = 0.0, up_rank: int = 0, down_rank: int = 0):
        super().__init__()
        self.gate_proj = lottalora.Linear(8, 12, bias=bias, rank=0, stream=0)
        self.up_proj = lottalora.Linear(8, 12, bias=bias, rank=up_rank, stream=1)
        self.down_proj = lottalora.Linear(12, 8, bias=bias, rank=down_rank, stream=2)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.down_proj(self.drop(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x)))


class Squared(nn.Module):
    """up's output times itself: quadratic in beta_up, not a product of two betas."""

    def __init__(self):
        super().__init__()
        self.up = lottalora.Linear(8, 8, bias=False, rank=0, stream=0)
        self.down = lottalora.Linear(8, 8, bias=False, rank=0, stream=1)

    def forward(self, x):
        h = self.up(x)
        return self.down(h * h)


class Residual(nn.Module):
    """up's output is also added to the result: beta_up acts on its own there."""

    def __init__(self):
        super().__init__()
        self.up = lottalora.Linear(8, 8, bias=False, rank=0, stream=0)
        self.down = lottalora.Linear(8, 8, bias=False, rank=0, stream=1)

    def forward(self, x):
        h = self.up(x)
        return self.down(h * 2.0) + h


def test_the_gated_mlp_product_is_found():
    assert find_redundant_betas(GatedMLP()) == {"up_proj": "down_proj"}
    assert find_redundant_betas(GatedMLP(dropout=0.1)) == {"up_proj": "down_proj"}
    wrapped = nn.Sequential(GatedMLP())
    assert find_redundant_betas(wrapped) == {"0.up_proj": "0.down_proj"}


def test_a_plain_chain_of_seeded_layers_keeps_only_the_last_beta():
    chain = nn.Sequential(lottalora.Linear(6, 6, bias=False, rank=0, stream=0),
                          lottalora.Linear(6, 6, bias=False, rank=0, stream=1),
                          lottalora.Linear(6, 4, rank=0, stream=2))
    assert find_redundant_betas(chain) == {"0": "1", "1": "2"}


class Twice(nn.Module):
    """down also applied to x, or up's output used twice: terms only one of the betas scales."""

    def __init__(self, where: str):
        super().__init__()
        self.up = lottalora.Linear(8, 8, bias=False, rank=0, stream=0)
        self.down = lottalora.Linear(8, 8, bias=False, rank=0, stream=1)
        self.where = where

    def forward(self, x):
        if self.where == "down":
            return self.down(self.up(x)) + self.down(x)
        return self.down(self.up(x)) + torch.tanh(self.up(x))


class SharedDown(nn.Module):
    """down placed twice in the model: the second place applies it to x alone."""

    def __init__(self):
        super().__init__()
        self.pair = nn.Sequential(lottalora.Linear(8, 8, bias=False, rank=0, stream=0),
                                  lottalora.Linear(8, 8, bias=False, rank=0, stream=1))
        self.alone = self.pair[1]

    def forward(self, x):
        return self.pair(x) + self.alone(x)


@pytest.mark.parametrize("model", [
    GatedMLP(bias=True), GatedMLP(up_rank=2), GatedMLP(down_rank=2), Squared(), Residual(),
    nn.Sequential(lottalora.Linear(6, 6, bias=False, rank=0), nn.ReLU(), lottalora.Linear(6, 6, rank=0, stream=1)),
    Twice("down"), Twice("up"), SharedDown(),
], ids=["up bias", "up adapter", "down adapter", "squared", "residual", "relu between", "down twice", "up twice",
        "down placed twice"])
def test_no_redundancy_is_claimed_where_beta_acts_on_its_own(model):
    assert find_redundant_betas(model) == {}


def test_an_untraceable_module_is_left_alone():
    class Branchy(GatedMLP):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return super().forward(x)
            return super().forward(-x)

    assert find_redundant_betas(Branchy()) == {}


def test_the_found_betas_are_truly_one_degree_of_freedom():
    torch.manual_seed(0)
    mlp, x = GatedMLP(), torch.randn(5, 8)
    with torch.no_grad():
        before = mlp(x)
        mlp.up_proj.beta.fill_(4.0)
        mlp.down_proj.beta.fill_(0.25)
        assert torch.allclose(mlp(x), before, rtol=1e-5, atol=1e-6)


def test_convert_freezes_llama_up_proj_beta_at_one_and_keeps_the_others():
    model = converted_tiny_llama()
    frozen = {n for n, p in model.named_parameters() if n.endswith(".beta") and not p.requires_grad}
    assert frozen == {f"model.layers.{i}.mlp.up_proj.beta" for i in range(2)}
    assert all(model.get_submodule(n.removesuffix(".beta")).beta.item() == 1.0 for n in frozen)
    trained = {n for n, p in model.named_parameters() if n.endswith(".beta") and p.requires_grad}
    assert len(trained) == 12 and "model.layers.0.mlp.down_proj.beta" in trained
    assert "model.layers.0.mlp.gate_proj.beta" in trained  # inside the activation: not a product


def test_convert_keeps_both_betas_when_the_mlp_has_adapters():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config())
    lottalora.convert(model, rank=2, target_modules=LLAMA_TARGETS, trainable_modules=LLAMA_TRAINABLE)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.endswith(".beta"))


def test_convert_with_train_beta_false_freezes_every_beta_at_one():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config())
    lottalora.convert(model, rank=2, target_modules=LLAMA_TARGETS, adapter_modules=LLAMA_ADAPTERS,
                      trainable_modules=LLAMA_TRAINABLE + ["mlp"], train_beta=False)
    betas = [(n, p) for n, p in model.named_parameters() if n.endswith(".beta")]
    assert len(betas) == 14 and not any(p.requires_grad for _, p in betas)
    assert model.model.layers[0].self_attn.q_proj.lora_A.requires_grad
    ids = torch.randint(0, 96, (2, 6))
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is None and p.item() == 1.0 for _, p in betas)


def test_convert_train_beta_must_be_a_bool():
    with pytest.raises(TypeError, match="train_beta"):
        lottalora.convert(nn.Sequential(nn.Linear(3, 3)), train_beta=1)
