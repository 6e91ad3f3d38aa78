"""merge_and_unload: seeded layers folded into plain nn.Linear for tools that do not know lottalora."""

import pickle

import pytest
import torch
from torch import nn

import lottalora
from lottalora.model.merge import merged_weight
from tests.support.models import converted_tiny_llama
from tests.support.tolerances import assert_close

transformers = pytest.importorskip("transformers")


def _trained_like(model):
    """Move adapters, betas and biases off their init so every term of the merge counts."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lottalora.Linear):
                m.beta.fill_(0.75)
                if m.lora_B is not None:
                    m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.1)
    return model


def test_merged_weight_is_beta_times_the_backbone_plus_the_scaled_product():
    layer = _trained_like(nn.Sequential(lottalora.Linear(24, 10, rank=3, alpha=6, seed=4)))[0]
    want = 0.75 * layer.backbone_weight().double() + 2.0 * layer.lora_B.double() @ layer.lora_A.double()
    assert_close(merged_weight(layer), want, torch.float32, "merged weight")


def test_merged_llama_is_plain_and_computes_the_same_logits_in_transformers(tmp_path):
    torch.manual_seed(0)
    model = _trained_like(converted_tiny_llama()).eval()
    ids = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        want = model(ids).logits
    assert lottalora.merge_and_unload(model) is model
    assert not any(isinstance(m, lottalora.Linear) for m in model.modules())
    q = model.model.layers[0].self_attn.q_proj
    assert type(q) is nn.Linear and not q.weight.requires_grad and q.weight.shape == (48, 48)
    assert not hasattr(model, "_lottalora_convert_calls")
    assert not model._load_state_dict_pre_hooks  # convert's load check goes with the seeded layers
    with torch.no_grad():
        assert_close(model(ids).logits, want.double(), torch.float32, "merged logits")
    # Pickled whole, the merged model names nothing of lottalora: torch alone can load it.
    assert b"lottalora" not in pickle.dumps(model)
    model.save_pretrained(tmp_path / "plain")  # what a tool that does not know lottalora reads
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    with torch.no_grad():
        assert_close(reloaded(ids).logits, want.double(), torch.float32, "reloaded by transformers")


@pytest.mark.parametrize("rebuilt", [False, True])
def test_gpt2_layers_merge_back_into_conv1d_that_gpt2_checkpoints_fit(tmp_path, rebuilt):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    model = _trained_like(lottalora.convert(model, rank=2)).eval()
    if rebuilt:  # a model rebuilt by from_pretrained merges the same way
        lottalora.save(model, tmp_path / "seeded")
        model = lottalora.from_pretrained(tmp_path / "seeded")
    ids = torch.randint(0, 50, (1, 8))
    with torch.no_grad():
        want = model(ids).logits
        lottalora.merge_and_unload(model)
        got = model(ids).logits
    attn = model.transformer.h[0].attn.c_attn
    assert type(attn) is Conv1D and attn.weight.shape == (32, 96)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert_close(got, want.double(), torch.float32, "merged GPT-2")
    model.save_pretrained(tmp_path / "plain")  # c_proj is square: a transposed weight would load silently
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "plain").eval()
    with torch.no_grad():
        assert_close(reloaded(ids).logits, want.double(), torch.float32, "GPT-2 reloaded by transformers")


def test_safe_merge_refuses_a_non_finite_weight_and_leaves_the_layer():
    model = nn.Sequential(lottalora.Linear(8, 4, rank=2), nn.ReLU(), lottalora.Linear(4, 2, rank=2))
    with torch.no_grad():
        model[2].lora_B.fill_(float("nan"))
    with pytest.raises(ValueError, match="layer '2': the merged weight has NaN"):
        lottalora.merge_and_unload(model, safe_merge=True)
    assert isinstance(model[2], lottalora.Linear)
    with pytest.raises(ValueError, match="no lottalora.Linear layer"):
        lottalora.merge_and_unload(nn.Sequential(nn.Linear(2, 2)))
