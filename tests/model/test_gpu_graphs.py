"""A converted LLaMA's decode step captured in a CUDA graph and replayed (what
``torch.compile(mode="reduce-overhead")`` does) gives eager's logits, on both backends. A host
synchronisation in a seeded layer would make the capture raise. Skipped without CUDA; the CPU
side of the same property is tests/ops/test_host_sync.py."""

import pytest
import torch

import lottalora
from benchmarks.harness.llama_shapes import cache_keyword
from tests.support.tolerances import assert_close

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.gpu

PROMPT = 8


def _converted_llama(dtype: torch.dtype, device: str = "cuda") -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).to(device, dtype).eval()
    lottalora.convert(model, rank=4, target_modules="all-linear")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, lottalora.Linear) and module.lora_B is not None:
                module.lora_B.normal_(0, 0.1)
    return model


def _takes_cache_position() -> bool:
    """Earlier transformers take where a step writes as cache_position; 5.24's static cache counts
    its length on the device instead, and each step advances it (a captured step too)."""
    import inspect

    return "cache_position" in inspect.signature(transformers.LlamaModel.forward).parameters


def _cache_arguments(cache, position: torch.Tensor) -> dict:
    return {cache_keyword(): cache, **({"cache_position": position} if _takes_cache_position() else {})}


def _decode(model, cache, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    arguments = _cache_arguments(cache, position)
    return model(input_ids=token, position_ids=position[None], use_cache=True, **arguments).logits


def _step_back(cache) -> None:
    """Undo a decode step's advance of the cache's length, so the next step writes where it did."""
    if not _takes_cache_position():
        cache.crop(-1)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("batch", [1, 16])
def test_decode_step_replays_in_a_cuda_graph_as_eager(monkeypatch, backend, batch):
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    model = _converted_llama(torch.bfloat16)
    cache = transformers.StaticCache(config=model.config, max_cache_len=32)
    prompt = torch.randint(0, 256, (batch, PROMPT), device="cuda")
    token = torch.randint(0, 256, (batch, 1), device="cuda")
    position = torch.tensor([PROMPT], device="cuda")
    with torch.inference_mode():
        model(input_ids=prompt, use_cache=True, **_cache_arguments(cache, torch.arange(PROMPT, device="cuda")))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: compiles kernels and fills caches before capture
            for _ in range(2):
                _decode(model, cache, token, position)
                _step_back(cache)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = _decode(model, cache, token, position)
        for _ in range(2):  # new inputs in the captured tensors: the graph reads them
            token.copy_(torch.randint(0, 256, (batch, 1), device="cuda"))
            graph.replay()  # capturing ran nothing: the length is still the prompt's
            torch.cuda.synchronize()
            replayed = logits.clone()
            _step_back(cache)
            eager = _decode(model, cache, token, position)  # writes the same cache entries
            _step_back(cache)
            # The same kernels on the same inputs: equal but for a GEMM that picks another split.
            assert_close(replayed, eager.double(), torch.bfloat16, what="replayed logits")
