"""lottalora.summary: counts on a converted LLaMA, the same from its checkpoint, and the report."""

import pytest
import torch
from torch import nn

import lottalora
from tests.support.models import LLAMA_ADAPTERS, LLAMA_TARGETS, LLAMA_TRAINABLE, tiny_llama_config, train_language_model

pytest.importorskip("transformers")
KEYS = ("trainable_params", "adapter_params", "frozen_params", "stored_params", "backbone_params",
        "backbone_bytes", "total_params", "trainable_fraction", "seeded_layers")


@pytest.fixture
def llama():
    """A tiny LLaMA (tiny_llama_config), its dense parameter count and its linear layers' sizes,
    then converted with the paper's recipe (rank 4 on attention, MLP frozen random)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    dense = sum(p.numel() for p in model.parameters())
    sizes = {name: (m.in_features, m.out_features) for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in LLAMA_TARGETS}
    lottalora.convert(model, rank=4, seed=2024, use_rslora=True, target_modules=LLAMA_TARGETS,
                      adapter_modules=LLAMA_ADAPTERS, trainable_modules=LLAMA_TRAINABLE)
    return model, dense, sizes


def test_counts_on_a_converted_llama(llama):
    model, dense, sizes = llama
    s = lottalora.summary(model)
    backbone = sum(i * o for i, o in sizes.values())
    adapters = sum(4 * (i + o) for name, (i, o) in sizes.items() if name.rsplit(".", 1)[-1] in LLAMA_ADAPTERS)
    cfg = tiny_llama_config()
    # embeddings, head, 2 norms per decoder layer and the final norm (LLaMA's projections have no bias)
    others = 2 * cfg.vocab_size * cfg.hidden_size + (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size
    assert len(sizes) == s["seeded_layers"] == 14
    assert s["backbone_params"] == backbone == dense - others
    assert s["adapter_params"] == adapters == 2 * 4 * (2 * (48 + 48) + 2 * (48 + 24))  # layers x rank x (q, o, k, v)
    assert s["total_params"] == dense + adapters + 14  # the architecture, plus adapters and one beta a layer
    assert s["stored_params"] == sum(p.numel() for p in model.parameters()) == s["total_params"] - backbone
    assert s["trainable_params"] == others + adapters + 12  # two up_proj betas are frozen (redundant)
    assert s["frozen_params"] == 2
    assert s["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert s["trainable_fraction"] == pytest.approx(s["trainable_params"] / s["total_params"])
    assert s["backbone_bytes"] == 4 * backbone  # float32
    assert list(s["betas"]) == list(sizes) and set(s["betas"].values()) == {1.0}
    assert dict(s).keys() >= set(KEYS) | {"betas", "layers"}


def test_report_shows_peft_line_backbone_and_betas(llama):
    model, _, _ = llama
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.beta.fill_(0.4375)
    s = lottalora.summary(model)
    text = str(s)
    assert text.startswith(f"trainable params: {s['trainable_params']:,} || all params: {s['total_params']:,} || "
                           "trainable%: ")
    assert f"backbone: {s['backbone_params']:,} values in 14 seeded layers" in text and "never stored" in text
    assert "| model.layers.1.mlp.down_proj | 48 x 80 | 0 |" in text and "| 0.4375 |" in text
    assert "| model.layers.0.mlp.up_proj |" in text and "1.0000 (frozen) |" in text
    assert s["betas"]["model.layers.1.mlp.down_proj"] == 0.4375


def test_a_checkpoint_summarises_like_the_live_model(llama, tmp_path):
    model, _, _ = llama
    train_language_model(model, steps=2, batch=2, length=8)
    lottalora.save(model, tmp_path / "ck")
    live, stored = lottalora.summary(model), lottalora.summary(tmp_path / "ck")
    assert {k: stored[k] for k in KEYS} == {k: live[k] for k in KEYS}
    assert stored["betas"] == live["betas"] and stored["layers"] == live["layers"]
    assert len(set(live["betas"].values())) > 1  # trained: the betas moved off 1.0
    assert str(stored) == str(live)


def test_a_plain_model_has_no_backbone():
    s = lottalora.summary(nn.Linear(3, 2))
    assert (s["trainable_params"], s["backbone_params"], s["seeded_layers"], s["betas"]) == (8, 0, 0, {})


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        lottalora.summary(tmp_path / "missing")
    with pytest.raises(ValueError, match="missing file lottalora_config.json"):
        lottalora.summary(tmp_path)
    with pytest.raises(TypeError, match="source"):
        lottalora.summary(42)
