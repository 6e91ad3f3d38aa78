"""lottalora.convert and materialize: which layers change, what trains, streams from names."""

import contextlib

import pytest
import torch
from torch import nn

import lottalora
from lottalora.model.patterns import name_matches
from tests.support.models import LLAMA_ADAPTERS, converted_tiny_llama

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
    (dict(trainable_modules=["embed", "embd"]), ValueError,
     r"trainable_modules=\['embed', 'embd'\]: \['embd'\] matched no module of the model"),
    # a regex must match the whole name: "emb" is not "embed"
    (dict(trainable_modules="emb"), ValueError, "trainable_modules='emb' matched no module of the model"),
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


def _seeded_names(model):
    return {n for n, m in model.named_modules() if isinstance(m, lottalora.Linear)}


@pytest.mark.parametrize("target_modules", [None, "all-linear", "ALL-LINEAR"])
def test_all_linear_converts_every_linear_but_the_output_head(target_modules):
    from transformers import LlamaForCausalLM

    from tests.support.models import tiny_llama_config

    model = LlamaForCausalLM(tiny_llama_config())
    lottalora.convert(model, rank=2, target_modules=target_modules)
    assert len(_seeded_names(model)) == 14 and type(model.lm_head) is nn.Linear
    assert not model.lm_head.weight.requires_grad  # frozen like the rest: list it in trainable_modules


def test_gpt2_tied_head_stays_tied_and_dense_and_naming_it_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16)
    model = lottalora.convert(GPT2LMHeadModel(config), rank=2)
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.transformer.wte.weight
    assert _seeded_names(model) == {"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                                    "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"}
    with torch.device("meta"):
        meta = GPT2LMHeadModel(config)
    lottalora.convert(meta, rank=2, trainable_modules=["wte"])
    lottalora.materialize(meta, "cpu")
    assert meta.lm_head.weight is meta.transformer.wte.weight and meta.lm_head.weight.device.type == "cpu"
    with pytest.raises(ValueError, match="lm_head.weight is tied to transformer.wte.weight"):
        lottalora.convert(GPT2LMHeadModel(config), target_modules=["lm_head"])


def test_a_classifier_head_made_of_layers_stays_dense_as_a_whole():
    """RoBERTa's ``classifier`` is a module holding ``dense`` and ``out_proj``: "all-linear"
    seeded both (a random projection before the labels) while it left BERT's one-linear
    classifier dense. The head is everything under ``classifier``; naming it trains it."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=24, max_position_embeddings=24, num_labels=3)
    model = lottalora.convert(RobertaForSequenceClassification(config), rank=2, trainable_modules=["classifier"])
    assert type(model.classifier.dense) is nn.Linear and type(model.classifier.out_proj) is nn.Linear
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert "roberta.encoder.layer.0.attention.self.query" in _seeded_names(model)
    named = lottalora.convert(RobertaForSequenceClassification(config), rank=2, target_modules=["out_proj"])
    assert isinstance(named.classifier.out_proj, lottalora.Linear)  # named, it converts as any layer
    # A model whose only linear layer is its head's (ResNet's classifier.1) is told so.
    from transformers import ResNetConfig, ResNetForImageClassification

    cnn = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], num_labels=3)
    with pytest.raises(ValueError, match=r"leaves the output head's layers \['classifier.1'\] dense: name them"):
        lottalora.convert(ResNetForImageClassification(cnn), rank=2)
    # Left frozen, a (usually fresh) head would never train: said once, with the way out.
    with pytest.warns(UserWarning, match=r"classifier head 'classifier' dense and frozen.*"
                                         r"trainable_modules=\['classifier'\] trains it"):
        lottalora.convert(RobertaForSequenceClassification(config), rank=2)


def test_a_second_convert_call_adds_layers_and_never_refreezes():
    model = TwoTower()
    lottalora.convert(model, rank=2, target_modules=["encoder.0"], trainable_modules=["embed"])
    model.head.weight.requires_grad_(True)  # the user unfreezes something by hand
    lottalora.convert(model, rank=3, target_modules=["encoder.2"], trainable_modules=["head"], train_beta=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"embed.weight", "head.weight", "head.bias", "encoder.0.lora_A", "encoder.0.lora_B",
                         "encoder.0.beta", "encoder.0.bias", "encoder.2.lora_A", "encoder.2.lora_B", "encoder.2.bias"}
    assert model.encoder[2].rank == 3 and model.encoder[0].rank == 2
    calls = model._lottalora_convert_calls
    assert [c["converted"] for c in calls] == [["encoder.0"], ["encoder.2"]]


def test_trainable_modules_that_match_no_module_are_refused_before_the_model_changes():
    # A misspelt entry was accepted and left its module frozen, unlike adapter_modules and rank_pattern.
    model = TwoTower()
    with pytest.raises(ValueError, match=r"\['encoder.9'\] matched no module"):
        lottalora.convert(model, rank=2, trainable_modules=["embed", "encoder.9"])
    assert not _seeded_names(model) and all(p.requires_grad for p in model.parameters())
    lottalora.convert(model, rank=2, target_modules=["encoder.0"], trainable_modules=r"embed")
    # A second call matches the model as it is now: its seeded layers are modules too.
    with pytest.raises(ValueError, match=r"\['haed'\] matched no module"):
        lottalora.convert(model, rank=2, target_modules=["encoder.2"], trainable_modules=["haed"])
    lottalora.convert(model, rank=2, target_modules=["encoder.2"], trainable_modules=["encoder.0", "head"])
    assert model.head.weight.requires_grad and _seeded_names(model) == {"encoder.0", "encoder.2"}


def test_exclude_modules_are_never_converted():
    model = lottalora.convert(TwoTower(), rank=2, exclude_modules=["head"])
    assert _seeded_names(model) == {"encoder.0", "encoder.2"}
    model = lottalora.convert(TwoTower(), rank=2, target_modules=r"encoder\..*", exclude_modules=r".*\.2")
    assert _seeded_names(model) == {"encoder.0"}


@pytest.mark.parametrize("bias,want", [
    ("lora_only", {"encoder.0.bias", "encoder.2.bias"}),
    ("none", set()),
    ("all", {"encoder.0.bias", "encoder.2.bias", "head.bias"}),
])
def test_bias_modes_follow_peft(bias, want):
    model = lottalora.convert(TwoTower(), rank=2, target_modules=["encoder.0", "encoder.2"], bias=bias)
    assert {n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")} == want


def test_rank_and_alpha_patterns_override_per_layer():
    model = lottalora.convert(TwoTower(), rank=4, alpha=8, rank_pattern={r"encoder\.2": 16, "head": 0},
                              alpha_pattern={"0": 2})
    assert (model.encoder[0].rank, model.encoder[2].rank, model.head.rank) == (4, 16, 0)
    assert (model.encoder[0].alpha, model.encoder[2].alpha) == (2.0, 8.0)
    with pytest.raises(ValueError, match=r"rank_pattern key 'nothing' matches none"):
        lottalora.convert(TwoTower(), rank_pattern={"nothing": 2})
    with pytest.raises(ValueError, match=r"rank_pattern\['head'\] must be an int >= 0, got -1"):
        lottalora.convert(TwoTower(), rank_pattern={"head": -1})


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(bias="some"), ValueError, "bias must be one of"),
    (dict(lora_dropout=1.0), ValueError, r"lora_dropout must be a probability in \[0, 1\), got 1.0"),
    (dict(alpha_pattern={"head": 0}), ValueError, "alpha_pattern"),
    (dict(exclude_modules=5), TypeError, "exclude_modules"),
])
def test_bad_peft_style_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        lottalora.convert(TwoTower(), **kwargs)


def test_a_peft_model_is_refused_before_its_adapters_become_seeded_layers():
    peft = pytest.importorskip("peft")
    base = TwoTower()
    wrapped = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["head"]))
    before = {name: type(m) for name, m in wrapped.named_modules()}
    with pytest.raises(ValueError, match="model holds PEFT's PeftModel at its root: convert the base model instead"):
        lottalora.convert(wrapped)
    with pytest.raises(ValueError, match=r"model holds PEFT's .*Linear at .*head: convert the base model"):
        lottalora.convert(wrapped.base_model.model)  # the model inside, PEFT's layers still in it
    assert {name: type(m) for name, m in wrapped.named_modules()} == before


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha_pattern={"head": 1e39}), r"alpha_pattern\['head'\] must be a positive finite number"),
    (dict(alpha=1e39), "alpha must be a positive finite number"),
])
def test_an_alpha_only_linear_would_refuse_is_refused_before_any_layer_changes(kwargs, match):
    """Above float32's largest, Linear refuses alpha: convert must refuse it up front, not after
    converting the layers that come before the one it fails on."""
    model = TwoTower()
    before = {name: type(m) for name, m in model.named_modules()}
    with pytest.raises(ValueError, match=match):
        lottalora.convert(model, **kwargs)
    assert {name: type(m) for name, m in model.named_modules()} == before
    assert all(p.requires_grad for p in model.parameters())


def test_lora_dropout_drops_the_adapter_input_only_and_only_in_training():
    model = lottalora.convert(TwoTower(), rank=4, lora_dropout=0.5, target_modules=["encoder.0"])
    layer = model.encoder[0]
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 16)
    torch.manual_seed(7)
    y = layer(x)
    torch.manual_seed(7)
    dropped = nn.functional.dropout(x, 0.5, training=True)
    base = x @ (layer.backbone_weight() * layer.beta).T + layer.bias
    want = base + (dropped @ layer.lora_A.T) @ layer.lora_B.T * layer.scaling
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    layer.eval()
    no_dropout = base + (x @ layer.lora_A.T) @ layer.lora_B.T * layer.scaling
    torch.testing.assert_close(layer(x), no_dropout, rtol=1e-5, atol=1e-5)
    assert "lora_dropout=0.5" in repr(layer)


class TiedHead(nn.Module):
    """A language-model shape without transformers: the head's weight is the embedding's. The
    embedding's name starts with the head's, so a tie must be told apart at a "." boundary."""

    def __init__(self):
        super().__init__()
        self.head_embed = nn.Embedding(10, 16)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10, bias=False)
        self.head.weight = self.head_embed.weight


def test_a_tied_linear_is_left_dense_by_all_linear_and_refused_by_name():
    model = lottalora.convert(TiedHead(), rank=2)
    assert _seeded_names(model) == {"proj"}
    assert type(model.head) is nn.Linear and model.head.weight is model.head_embed.weight
    with pytest.raises(ValueError, match=r"head\.weight is tied to head_embed\.weight: a tied weight is shared"):
        lottalora.convert(TiedHead(), target_modules=["head"])
    # A weight also registered under another name inside its own module is not tied elsewhere.
    model = TiedHead()
    model.proj.register_parameter("alias", model.proj.weight)
    lottalora.convert(model, rank=2, target_modules=["proj"])
    assert isinstance(model.proj, lottalora.Linear)


def _shared_encoder_layer() -> TwoTower:
    model = TwoTower()
    model.encoder[0] = model.encoder[2] = nn.Linear(16, 16)  # one module, reached as encoder.0 and encoder.2
    return model


def test_a_module_shared_under_two_names_becomes_one_seeded_layer_at_both(tmp_path):
    """``encoder.0`` and ``encoder.2`` are one nn.Linear: it is one layer, so it converts into one
    seeded layer placed at both names (it was left dense and frozen by all-linear, and naming
    either place was refused as a tie), whichever place the options name."""
    model = lottalora.convert(_shared_encoder_layer(), rank=2)
    assert _seeded_names(model) == {"encoder.0", "head"}
    layer = model.encoder[0]
    assert model.encoder[2] is layer and layer.stream == lottalora.stream_for_name("encoder.0")
    with torch.no_grad():
        layer.lora_B.normal_()
    ids = torch.tensor([[1, 2, 3]])
    w = layer.backbone_weight() * layer.beta
    delta = (layer.lora_B @ layer.lora_A) * layer.scaling

    def once(h):
        return h @ (w + delta).T + layer.bias

    want = model.head(once(torch.relu(once(model.embed(ids)))))
    torch.testing.assert_close(model(ids), want, rtol=1e-5, atol=1e-5)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p is layer.lora_A for p in trainable) == 1  # one parameter, however many places
    # Either place selects it; excluding either leaves it dense (and trainable_modules untouched).
    for place in ("encoder.0", "encoder.2"):
        chosen = lottalora.convert(_shared_encoder_layer(), rank=2, target_modules=[place])
        assert isinstance(chosen.encoder[0], lottalora.Linear) and chosen.encoder[2] is chosen.encoder[0]
        kept = lottalora.convert(_shared_encoder_layer(), rank=2, exclude_modules=[place])
        assert _seeded_names(kept) == {"head"} and type(kept.encoder[2]) is nn.Linear
    # The per-layer options match either name too.
    second = lottalora.convert(_shared_encoder_layer(), rank=2, target_modules=["encoder.2"],
                               adapter_modules=["encoder.2"], rank_pattern={"encoder.2": 3})
    assert second.encoder[0].rank == 3 and second.encoder[2] is second.encoder[0]
    dense = lottalora.convert(_shared_encoder_layer(), rank=2, exclude_modules=["encoder.2"],
                              trainable_modules=["encoder.2"])
    assert type(dense.encoder[0]) is nn.Linear and dense.encoder[0].weight.requires_grad
    # It saves and loads as the one layer it is: the reload computes the same bits.
    lottalora.save(model, tmp_path / "ck")
    fresh = lottalora.convert(_shared_encoder_layer(), rank=2)
    lottalora.load(fresh, tmp_path / "ck")
    assert fresh.encoder[2] is fresh.encoder[0]
    assert torch.equal(fresh(ids), model(ids))


def test_an_architecture_placing_a_module_twice_reloads_from_its_directory(tmp_path, monkeypatch):
    """from_pretrained put the checkpoint's seeded layer at one of the module's two names: the
    other stayed dense and the directory convert had saved could not load."""
    from transformers import BertConfig, BertForSequenceClassification

    built = BertForSequenceClassification.__init__

    def with_alias(self, config):
        built(self, config)
        self.alias = self.bert.encoder.layer[0].attention.self.query  # as an architecture may share a module

    monkeypatch.setattr(BertForSequenceClassification, "__init__", with_alias)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=24, num_labels=3)
    model = lottalora.convert(BertForSequenceClassification(config), rank=2, trainable_modules=["classifier"])
    assert isinstance(model.alias, lottalora.Linear)
    model.save_pretrained(tmp_path / "m")
    rebuilt = lottalora.from_pretrained(tmp_path / "m")
    assert rebuilt.alias is rebuilt.bert.encoder.layer[0].attention.self.query
    ids = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, model.eval()(ids).logits)


class ManyLayers(nn.Module):
    def __init__(self, layers: int):
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(4, 4) for _ in range(layers)))


def _model_scans_during_convert(layers: int) -> int:
    """How many times convert walks the model's parameters or modules from its root."""
    model = ManyLayers(layers)
    scans = 0

    def counted(method):
        def wrapper(*args, **kwargs):
            nonlocal scans
            scans += 1
            return method(*args, **kwargs)
        return wrapper

    # Instance attributes shadow the class's methods; parameters() and modules() go through these too.
    model.named_parameters = counted(model.named_parameters)
    model.named_modules = counted(model.named_modules)
    lottalora.convert(model, rank=1)
    assert len(_seeded_names(model)) == layers
    return scans


def test_convert_walks_the_model_a_fixed_number_of_times_whatever_its_depth():
    # Tie detection used to scan every parameter once per converted layer: quadratic in depth.
    assert _model_scans_during_convert(200) == _model_scans_during_convert(2)


def test_load_state_dict_of_a_converted_model_is_all_or_nothing(tmp_path):
    """A bad entry in the last seeded layer is refused before any module loads: nn.Module loads
    module by module, and the earlier layers (and the embedding) would otherwise change."""
    import copy
    import pickle

    model = lottalora.convert(TwoTower(), rank=4, seed=1)
    other = lottalora.convert(TwoTower(), rank=4, seed=1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    sd = other.state_dict()
    sd["head.lora_A"] = torch.zeros(3, 16)  # a rank-3 adapter for the rank-4 head, the last layer loaded
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"lottalora.Linear 'head': lora_A has shape \(3, 16\)"):
        model.load_state_dict(sd)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if isinstance(before[k], torch.Tensor))
    sd["head.lora_A"] = other.head.lora_A.detach().clone()
    sd["encoder.0.beta"] = sd["encoder.0.beta"].reshape(())  # lottalora 0.1's 0-dim beta still loads
    model.load_state_dict(sd)
    assert torch.equal(model.encoder[0].lora_B, other.encoder[0].lora_B)
    from lottalora.model.load_check import check_loads_whole

    check_loads_whole(model)  # what a second convert call on the model does: no second check
    assert len(model._load_state_dict_pre_hooks) == 1
    restored = pickle.loads(pickle.dumps(model))  # the check is a module-level function: models pickle
    with pytest.raises(ValueError, match="lora_A has shape"):
        restored.load_state_dict({**sd, "head.lora_A": torch.zeros(3, 16)})


def _peft_selection(model, target_modules, layers_to_transform, layers_pattern):
    """The modules PEFT's own rule (check_target_module_exists) picks, by name."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=target_modules, layers_to_transform=layers_to_transform,
                        layers_pattern=layers_pattern)
    return {n for n, m in model.named_modules()
            if n and (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
            and check_target_module_exists(config, n) is True}


def _small(kind):
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    from tests.support.models import tiny_llama_config

    if kind == "llama":
        config = tiny_llama_config()
        config.num_hidden_layers = 3
        return LlamaForCausalLM(config)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=50, n_positions=16))
    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3,
                                                    num_attention_heads=2, intermediate_size=40,
                                                    max_position_embeddings=16))


@pytest.mark.parametrize("kind,targets,layers,pattern", [
    ("llama", ["q_proj", "v_proj", "down_proj"], [0, 2], "layers"),
    ("llama", ["q_proj", "up_proj"], 1, None),
    ("gpt2", ["c_attn", "c_fc"], [2], "h"),
    ("gpt2", ["c_proj"], [0, 1], ["blocks", "h"]),
    ("bert", ["query", "value", "dense"], [1], "layer"),
    ("bert", ["query", "dense"], [0, 2], None),
])
def test_layers_to_transform_picks_the_layers_peft_picks(kind, targets, layers, pattern):
    model = _small(kind)
    want = _peft_selection(model, targets, layers, pattern)
    lottalora.convert(model, rank=2, target_modules=targets, layers_to_transform=layers, layers_pattern=pattern)
    assert want and _seeded_names(model) == want
    call = model._lottalora_convert_calls[-1]["arguments"]
    assert (call["layers_to_transform"], call["layers_pattern"]) == (layers, pattern)


def test_layers_to_transform_applies_to_all_linear_and_leaves_unnumbered_layers():
    model = _small("llama")
    lottalora.convert(model, rank=2, layers_to_transform=[1], layers_pattern="layers")
    assert _seeded_names(model) and all(n.startswith("model.layers.1.") for n in _seeded_names(model))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(target_modules=r".*q_proj", layers_to_transform=[0]), ValueError, "need target_modules as a list"),
    (dict(target_modules=["q_proj"], layers_pattern="layers"), ValueError, "together with layers_to_transform"),
    (dict(target_modules=["q_proj"], layers_to_transform=[-1]), ValueError, "an int >= 0 or a list"),
    (dict(target_modules=["q_proj"], layers_to_transform=[7]), ValueError, r"in layers_to_transform=\[7\]"),
    (dict(target_modules=["q_proj"], layers_to_transform=0, layers_pattern=3), TypeError, "layers_pattern"),
])
def test_bad_layer_selections_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        lottalora.convert(_small("llama"), **kwargs)


@pytest.mark.parametrize("value", [True, "gaussian", False, "orthogonal"])
def test_convert_initializes_adapters_as_init_lora_weights_says_and_records_it(value):
    torch.manual_seed(0)
    model = lottalora.convert(TwoTower(), rank=4, init_lora_weights=value)
    layer = model.encoder[0]
    assert layer.init_lora_weights == value
    assert bool(layer.lora_B.any()) == (value in (False, "orthogonal"))
    assert bool((layer.lora_B @ layer.lora_A).abs().max() > 1e-6) == (value is False)  # starts at the backbone
    assert model._lottalora_convert_calls[-1]["arguments"]["init_lora_weights"] == value
    with pytest.raises(ValueError, match="OLoRA initializes A and B from a QR decomposition"):
        lottalora.convert(TwoTower(), rank=4, init_lora_weights="olora")


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=16)).eval()


def _conversion(model: nn.Module) -> tuple[dict, set, list]:
    """({plain name: stream} of the seeded layers, plain names of the trainable parameters,
    the recorded convert calls) of a converted model, wrapped or not."""
    from lottalora.model.records import convert_calls
    from lottalora.nn import plain_name, seeded_layers, unwrap_model

    streams = {name: layer.stream for name, layer in seeded_layers(model, plain=True).items()}
    trainable = {plain_name(n) for n, p in unwrap_model(model).named_parameters() if p.requires_grad}
    return streams, trainable, convert_calls(unwrap_model(model))


# Every name option at once, as regexes and suffix lists: each must see the bare model's names.
_GPT2_NAME_OPTIONS = dict(exclude_modules=r"transformer\.h\.1\.mlp\..*", adapter_modules=["c_attn"],
                          trainable_modules=r"transformer\.ln_f", rank_pattern={r"h\.0\.attn\.c_attn": 4},
                          alpha_pattern={"c_attn": 8.0})


@pytest.mark.parametrize("target_modules", [None, r"transformer\.h\.\d\.(attn|mlp)\.c_.*"])
def test_a_model_converted_inside_its_compile_wrapper_is_the_bare_models_conversion(target_modules):
    # The options were matched against the wrapper's "_orig_mod."-prefixed names (an exclude or
    # trainable regex silently matched nothing) and the streams came from them (other backbones).
    bare = lottalora.convert(_tiny_gpt2(), rank=2, seed=7, target_modules=target_modules, **_GPT2_NAME_OPTIONS)
    compiled = torch.compile(_tiny_gpt2())
    assert lottalora.convert(compiled, rank=2, seed=7, target_modules=target_modules,
                             **_GPT2_NAME_OPTIONS) is compiled
    streams, trainable, calls = _conversion(compiled)
    assert (streams, trainable, calls) == _conversion(bare)
    assert len(streams) == 6 and "transformer.ln_f.weight" in trainable
    assert streams["transformer.h.0.attn.c_attn"] == lottalora.stream_for_name("transformer.h.0.attn.c_attn")
    ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():  # the inner model in eager: compiling the forward is not what is tested
        assert torch.equal(compiled._orig_mod(ids).logits, bare(ids).logits)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 16), nn.ReLU()), nn.Linear(16, 4))


def test_submodules_compiled_in_place_convert_as_the_bare_model_does():
    options = dict(rank=2, seed=3, exclude_modules=["3"], trainable_modules=r"3", adapter_modules=r"2\.0")
    bare = lottalora.convert(_mlp(), **options)
    model = _mlp()
    model[0] = torch.compile(model[0], backend="eager")  # a leaf layer: its wrapper must now run the seeded layer
    model[2] = torch.compile(model[2], backend="eager")  # a block: its layers sit at "2._orig_mod.<i>"
    lottalora.convert(model, **options)
    assert _conversion(model) == _conversion(bare)
    x = torch.randn(3, 8)
    # force_eager runs each wrapper's bound forward without tracing it (the wrapper of a leaf
    # layer went on calling the dense layer it was built around); torch before 2.6 traces it.
    stance = getattr(torch.compiler, "set_stance", None)
    with torch.no_grad(), stance("force_eager") if stance else contextlib.nullcontext():
        assert torch.equal(model(x), bare(x))
    lottalora.add_adapter(model, "other", rank=2, target_modules=r"2\.0")  # named adapters match plain names too
    assert model[2]._orig_mod[0].adapter_names() == bare[2][0].adapter_names() + ["other"]


def test_resizing_the_token_embeddings_of_a_seeded_head_is_refused_before_anything_changes():
    """transformers resized the input embeddings, then failed on the seeded head: the model was
    left with more token rows than logits. A dense head resizes as transformers does."""
    from transformers import LlamaForCausalLM

    from tests.support.models import tiny_llama_config

    config = tiny_llama_config()
    seeded = lottalora.convert(LlamaForCausalLM(config), rank=2, target_modules=["q_proj", "lm_head"])
    rows = seeded.model.embed_tokens.weight.shape[0]
    with pytest.raises(ValueError, match=r"output embeddings 'lm_head' are a seeded layer .*resize before convert"):
        seeded.resize_token_embeddings(rows + 32)
    assert seeded.model.embed_tokens.weight.shape[0] == rows and seeded.config.vocab_size == rows
    head = seeded.lm_head
    assert seeded.resize_token_embeddings(rows) is seeded.get_input_embeddings()  # no change: allowed
    assert seeded.resize_token_embeddings(rows - 8, pad_to_multiple_of=rows) is seeded.get_input_embeddings()
    assert seeded.lm_head is head
    with pytest.raises(ValueError, match="cannot be resized"):
        seeded.resize_token_embeddings(rows, pad_to_multiple_of=rows + 1)
    dense_head = lottalora.convert(LlamaForCausalLM(config), rank=2, target_modules=["q_proj"])
    dense_head.resize_token_embeddings(rows + 32)
    assert dense_head.lm_head.out_features == rows + 32 == dense_head.config.vocab_size
