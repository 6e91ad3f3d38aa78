"""LLaMA-style models in the three variants the benchmarks compare, built without waste.

Variants, all with embeddings, norms and the head trainable (the paper's language-model recipe):
- ``full``: stored weights, everything trained;
- ``lora``: stored frozen weights plus PEFT-style unfused LoRA (rank 8) on q, k, v, o;
- ``lottalora``: q, k, v, o seeded with rank-8 adapters, the MLP seeded with no adapter.
Models are built on the meta device and then materialized, so construction never holds a
second copy of any weight.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import lottalora

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
TRAINABLE = ["embed_tokens", "norm", "input_layernorm", "post_attention_layernorm", "lm_head"]
RANK = 8
VARIANTS = ("full", "lora", "lottalora")

# name: (hidden, layers, intermediate, heads); vocabulary 32000, untied head, as LLaMA.
CONFIGS = {
    "tiny": (64, 2, 160, 4),
    "35M": (384, 6, 1024, 6),
    "134M": (768, 12, 2048, 12),
    "374M": (1024, 24, 2816, 16),
    "1.26B": (2048, 22, 5632, 16),
    "2.7B": (2560, 32, 6912, 20),
}


def llama_config(name: str):
    from transformers import LlamaConfig

    hidden, layers, inter, heads = CONFIGS[name]
    return LlamaConfig(vocab_size=256 if name == "tiny" else 32000, hidden_size=hidden, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=2048, tie_word_embeddings=False)


def parameter_count(name: str) -> int:
    """Parameters of the dense model (what ``name`` means)."""
    hidden, layers, inter, _ = CONFIGS[name]
    vocab = 256 if name == "tiny" else 32000
    return layers * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) + 2 * vocab * hidden + hidden


class UnfusedLoRALinear(nn.Module):
    """The baseline users would pick: a frozen stored nn.Linear plus LoRA as two nn.Linear
    (PEFT's layout), computed as base(x) + scale * B(A(x))."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.scaling = 1.0 / math.sqrt(rank)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


def build(name: str, variant: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A LlamaForCausalLM of config ``name`` in ``variant``, materialized on ``device``."""
    from transformers import LlamaForCausalLM

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(llama_config(name))
    finally:
        torch.set_default_dtype(previous)
    if variant == "lottalora":
        lottalora.convert(model, rank=RANK, use_rslora=True, seed=0, target_modules=ATTENTION + MLP,
                          adapter_modules=ATTENTION, trainable_modules=TRAINABLE)
    elif variant == "lora":
        for module_name, module in list(model.named_modules()):
            if any(module_name.endswith("." + t) for t in ATTENTION):
                parent, _, child = module_name.rpartition(".")
                setattr(model.get_submodule(parent), child, UnfusedLoRALinear(module, RANK))
        for param_name, param in model.named_parameters():
            param.requires_grad_(".lora_" in param_name or any(f".{t}." in f".{param_name}" for t in TRAINABLE))
    lottalora.materialize(model, device)
    if variant == "lora":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, UnfusedLoRALinear):
                    module.lora_B.weight.zero_()
    return model
