"""LLaMA shapes for the end-to-end benchmarks, built from configs (no download) on the meta device
and materialized, in the two stored forms a user would compare a seed-only model with.

Shapes: the small configs of ``harness.llama`` (multi-head attention, vocabulary 32000), and the
published Llama-3 shapes with grouped-query attention and the 128256-token vocabulary: "1B"
(Llama-3.2-1B), "8B" (Llama-3-8B) and "70B" (Llama-3-70B). Heads are untied everywhere, so the
output head is a stored bf16 matrix in every variant (``target_modules="all-linear"`` leaves it).
"""

from __future__ import annotations

import torch
from torch import nn

import lottalora

from . import llama

# name: (hidden, layers, intermediate, heads, KV heads, vocabulary)
SHAPES = {name: (h, n, i, a, a, 256 if name == "tiny" else 32000) for name, (h, n, i, a) in llama.CONFIGS.items()}
SHAPES.update({
    "micro": (128, 2, 256, 4, 2, 256),  # the smallest the int4 kernel takes (in_features % 128): quick runs
    "1B": (2048, 16, 8192, 32, 8, 128256),
    "8B": (4096, 32, 14336, 32, 8, 128256),
    "70B": (8192, 80, 28672, 64, 8, 128256),
})
RANK = 8


def shape_config(name: str, max_positions: int = 4096):
    """The transformers LlamaConfig of shape ``name``."""
    from transformers import LlamaConfig

    if name not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {name!r}")
    hidden, layers, inter, heads, kv_heads, vocab = SHAPES[name]
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                       tie_word_embeddings=False, rope_theta=500000.0 if vocab == 128256 else 10000.0)


def linear_params(name: str) -> int:
    """Weights of the decoder's linear layers (what ``all-linear`` seeds): every layer's q, k, v,
    o and MLP, without the embeddings and the head."""
    hidden, layers, inter, heads, kv_heads, _ = SHAPES[name]
    kv = hidden // heads * kv_heads
    return layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter)


def on_meta(name: str, dtype: torch.dtype) -> nn.Module:
    """A LlamaForCausalLM of shape ``name`` with every tensor on the meta device, in ``dtype``."""
    from transformers import LlamaForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            return LlamaForCausalLM(shape_config(name))
    finally:
        torch.set_default_dtype(previous)


def build_stored(name: str, dtype: torch.dtype, device) -> nn.Module:
    """Shape ``name`` with its weights stored as ``nn.Linear`` in ``dtype``, randomly initialised
    (a stored weight's speed does not depend on its values)."""
    return lottalora.materialize(on_meta(name, dtype), device).eval()


def build_seeded(name: str, dtype: torch.dtype, device, rank: int = RANK, seed: int = 0) -> nn.Module:
    """Shape ``name`` converted with ``target_modules="all-linear"`` (every decoder linear seeded,
    the head stored), rank-``rank`` adapters filled with random values as after training."""
    model = on_meta(name, dtype)
    lottalora.convert(model, rank=rank, use_rslora=True, seed=seed, target_modules="all-linear")
    lottalora.materialize(model, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, lottalora.Linear) and module.lora_A is not None:
                module.lora_A.normal_(0.0, module.in_features ** -0.5, generator=generator)
                module.lora_B.normal_(0.0, 0.02, generator=generator)
    return model.eval()


def held_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (each storage once): what it holds in memory."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def contiguous_head_input(model: nn.Module) -> nn.Module:
    """Make the output head's input contiguous before it multiplies (a forward pre-hook).

    transformers hands the head the last position of each sequence, hidden[:, -1:, :], a view
    that cannot be folded into a matrix without a copy. torch.matmul then folds it (one small
    copy) only when the weight requires grad; for a frozen head (``lottalora.convert`` freezes
    it, as any frozen model does) it expands the weight to (batch, hidden, vocab) and runs a
    batched GEMM instead: at batch 16 of the 35M shape 375 MiB and 2.5 s a call on the CPU
    against 1 MiB and 10 ms (benchmarks/NOTES.md, "End-to-end"). Applied to every variant alike."""
    model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
    return model


def cache_keyword() -> str:
    """The keyword a LlamaForCausalLM's forward and ``generate`` take the KV cache by: ``cache``
    in transformers 5.x from 5.20 or so, ``past_key_values`` before (still accepted, deprecated)."""
    import inspect

    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
