"""A converted LLaMA generates under ``torch.compile(fullgraph=True)`` with a static KV cache,
as transformers compiles a model for fast decoding: the seeded layers are opaque custom ops to
Dynamo, so nothing in them breaks the graph, and greedy tokens equal eager ones."""

import pytest
import torch

import lottalora

transformers = pytest.importorskip("transformers")


def _converted_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    lottalora.convert(model, rank=4, target_modules="all-linear")
    with torch.no_grad():  # adapters as after training: B = 0 would leave them out of the tokens
        for module in model.modules():
            if isinstance(module, lottalora.Linear) and module.lora_B is not None:
                module.lora_B.normal_(0, 0.1)
    return model


def test_compiled_static_cache_generate_has_no_graph_breaks_and_matches_eager():
    from torch._dynamo.utils import counters

    model = _converted_llama()
    ids = torch.randint(0, 128, (2, 7))
    mask = torch.ones_like(ids)
    options = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, cache_implementation="static",
                   pad_token_id=0)
    eager = model.generate(ids, **options)
    torch._dynamo.reset()
    counters.clear()
    model.forward = torch.compile(model.forward, fullgraph=True)  # fullgraph: a break raises
    compiled = model.generate(ids, **options)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 1  # it compiled (prefill, then decode steps)
    assert torch.equal(compiled, eager)
    assert eager.shape == (2, 13)
