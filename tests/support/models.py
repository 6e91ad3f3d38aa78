"""Small models for conversion and checkpoint tests, built from configs (no download)."""

import torch

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLAMA_ADAPTERS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LLAMA_TRAINABLE = ["embed_tokens", "norm", "input_layernorm", "post_attention_layernorm", "lm_head"]


def tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)


def converted_tiny_llama(meta: bool = False):
    """The paper's language-model recipe: LoRA on attention, frozen random MLP, trained
    embeddings, norms and head."""
    from transformers import LlamaForCausalLM

    import lottalora

    if meta:
        with torch.device("meta"):
            model = LlamaForCausalLM(tiny_llama_config())
    else:
        model = LlamaForCausalLM(tiny_llama_config())
    lottalora.convert(model, rank=4, seed=2024, use_rslora=True, target_modules=LLAMA_TARGETS,
                      adapter_modules=LLAMA_ADAPTERS, trainable_modules=LLAMA_TRAINABLE)
    if meta:
        lottalora.materialize(model, "cpu")
    return model


def train_language_model(model, steps: int, batch: int = 4, length: int = 12, lr: float = 1e-2):
    """``steps`` Adam steps of next-token loss on random ids of ``model``'s tiny vocabulary."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    ids = torch.randint(0, 96, (batch, length))
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model
