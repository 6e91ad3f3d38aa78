"""Seed-only checkpoints: round trip across processes, size, and refusal of anything wrong."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lottalora
from lottalora.checkpoint.format import CONFIG_NAME, TENSORS_NAME
from tests.support.checkpoints import sign
from tests.support.models import converted_tiny_llama, tiny_llama_config, train_language_model
from tests.support.processes import ROOT

pytest.importorskip("transformers")


@pytest.fixture
def trained(tmp_path):
    """A converted tiny LLaMA after a few optimizer steps, saved to tmp_path / 'ck'."""
    torch.manual_seed(0)
    model = train_language_model(converted_tiny_llama(), steps=3)
    lottalora.save(model, tmp_path / "ck")
    return model, tmp_path / "ck"


def test_trained_model_loads_in_a_fresh_process_with_identical_outputs(trained, tmp_path):
    model, ck = trained
    ids = torch.arange(24).reshape(2, 12) % 96
    with torch.no_grad():
        want = model(ids).logits
    script = (
        "import sys, torch, lottalora\n"
        "sys.path.insert(0, sys.argv[3])\n"
        "from tests.support.models import converted_tiny_llama\n"
        "torch.manual_seed(12345)  # a different global seed: only the checkpoint may matter\n"
        "model = converted_tiny_llama(meta=True)\n"
        "lottalora.load(model, sys.argv[1])\n"
        "with torch.no_grad():\n"
        "    torch.save(model(torch.arange(24).reshape(2, 12) % 96).logits, sys.argv[2])\n"
    )
    out = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", script, str(ck), str(out), str(ROOT)], check=True)
    assert torch.equal(torch.load(out), want)


def test_checkpoint_holds_adapters_and_trainable_modules_not_backbones(trained):
    model, ck = trained
    from safetensors import safe_open

    with safe_open(str(ck / TENSORS_NAME), framework="pt") as f:
        keys = set(f.keys())
        stored = sum(math.prod(f.get_slice(k).get_shape()) for k in keys)
    assert not any(k.endswith(".weight") and ("proj" in k) for k in keys)  # no backbone or dense proj
    assert "model.embed_tokens.weight" in keys and "model.layers.0.self_attn.q_proj.lora_A" in keys
    assert stored == sum(t.numel() for k, t in model.state_dict().items() if not k.endswith("_extra_state"))
    config = json.loads((ck / CONFIG_NAME).read_text())
    assert len(config["layers"]) == 14 and (ck / CONFIG_NAME).stat().st_size < 16_000
    assert (ck / TENSORS_NAME).stat().st_size < 4 * stored + 10_000


def test_info_reports_layers_and_sizes(trained, capsys):
    _, ck = trained
    from lottalora.cli import main

    assert main(["info", str(ck)]) == 0
    out = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in out and "bytes stored" in out and "stored fp16 weights" in out


def _corrupt(ck: Path, how: str):
    config_path, tensor_path = ck / CONFIG_NAME, ck / TENSORS_NAME
    config = json.loads(config_path.read_text())
    if how == "missing":
        tensor_path.unlink()
    elif how == "truncated":
        tensor_path.write_bytes(tensor_path.read_bytes()[:-100])
    elif how == "tampered":
        data = bytearray(tensor_path.read_bytes())
        data[-5] ^= 0xFF
        tensor_path.write_bytes(bytes(data))
    elif how == "bad json":
        config_path.write_text("{not json")
    elif how == "format version":
        config["format_version"] = 99
    elif how == "stream version":
        config["generator"]["stream_version"] = 3
    elif how == "fingerprint":
        config["layers"][0]["fingerprint"] = "0" * 16
    elif how == "unknown layer":
        config["layers"][0]["name"] = "model.layers.9.self_attn.q_proj"
    elif how == "shape":
        config["layers"][0]["in_features"] = 47
    elif how == "missing layer":
        config["layers"].pop()
    if how in ("format version", "stream version", "fingerprint", "unknown layer", "shape", "missing layer"):
        config_path.write_text(json.dumps(sign(config)))  # signed: each edit must be refused on its own


@pytest.mark.parametrize("how,match", [
    ("missing", "missing file"), ("truncated", "truncated"), ("tampered", "tampered"),
    ("bad json", "not valid JSON"), ("format version", "format_version"), ("stream version", "generator"),
    ("fingerprint", "fingerprint differs"), ("unknown layer", "not lottalora.Linear layers"),
    ("shape", "in the checkpoint"), ("missing layer", "not in the checkpoint"),
])
def test_bad_checkpoints_are_refused_and_nothing_is_loaded(trained, how, match):
    _, ck = trained
    _corrupt(ck, how)
    torch.manual_seed(7)
    fresh = converted_tiny_llama()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    specs = [(m.seed, m.stream) for m in fresh.modules() if isinstance(m, lottalora.Linear)]
    with pytest.raises(ValueError, match=match):
        lottalora.load(fresh, ck)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert specs == [(m.seed, m.stream) for m in fresh.modules() if isinstance(m, lottalora.Linear)]


def test_a_model_with_other_tensor_shapes_is_refused(trained):
    _, ck = trained
    from transformers import LlamaForCausalLM

    import lottalora as ll
    from tests.support.models import LLAMA_ADAPTERS, LLAMA_TARGETS, LLAMA_TRAINABLE, tiny_llama_config

    cfg = tiny_llama_config()
    cfg.vocab_size = 97
    other = LlamaForCausalLM(cfg)
    ll.convert(other, rank=4, seed=2024, use_rslora=True, target_modules=LLAMA_TARGETS,
               adapter_modules=LLAMA_ADAPTERS, trainable_modules=LLAMA_TRAINABLE)
    with pytest.raises(ValueError, match="shape"):
        ll.load(other, ck)


def test_saving_a_model_without_seeded_layers_is_refused(tmp_path):
    with pytest.raises(ValueError, match="convert it first"):
        lottalora.save(torch.nn.Linear(2, 2), tmp_path)


def test_info_on_a_bad_directory_fails_with_a_message(tmp_path, capsys):
    from lottalora.cli import main

    assert main(["info", str(tmp_path)]) == 2
    assert "missing file lottalora_config.json" in capsys.readouterr().err


def test_tied_weights_are_stored_once_and_restored(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    def gpt2():
        torch.manual_seed(len(str(tmp_path)))
        m = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
        return lottalora.convert(m, rank=2, target_modules=["c_attn", "c_proj", "c_fc"],
                                 trainable_modules=["wte", "wpe", "ln_1", "ln_2", "ln_f"])

    model = gpt2()
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    lottalora.save(model, tmp_path / "ck")
    config = json.loads((tmp_path / "ck" / CONFIG_NAME).read_text())
    assert config["aliases"] == {"transformer.wte.weight": "lm_head.weight"} or \
        config["aliases"] == {"lm_head.weight": "transformer.wte.weight"}
    fresh = gpt2()
    lottalora.load(fresh, tmp_path / "ck")
    ids = torch.arange(8).reshape(1, 8)
    model.eval()  # no dropout
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)
    assert fresh.lm_head.weight.data_ptr() == fresh.transformer.wte.weight.data_ptr()


class _Tied(torch.nn.Module):
    """A plain module whose head may share its embedding's weight, around a seeded layer that
    may sit at two places (the same layer applied twice)."""

    def __init__(self, tie: bool, twice: bool = False):
        super().__init__()
        self.emb, self.head = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.a = lottalora.Linear(8, 8, rank=2, seed=1)
        self.b = self.a if twice else torch.nn.Identity()
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(self.b(self.a(self.emb(x))))


def _drawn(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def test_a_checkpoint_whose_tied_tensors_differ_is_refused_and_ties_survive_a_meta_load(tmp_path):
    torch.manual_seed(0)
    untied = _drawn(_Tied(tie=False))
    lottalora.save(untied, tmp_path / "untied")
    tied = _Tied(tie=True)
    before = {k: v.clone() for k, v in tied.state_dict().items()}
    # One tensor in the model, two values in the file: loading both into it kept the last.
    with pytest.raises(ValueError, match="'emb.weight' and 'head.weight' are one tensor in the model .tied. but "
                                         "differ in the checkpoint"):
        lottalora.load(tied, tmp_path / "untied")
    assert all(torch.equal(before[k], v) for k, v in tied.state_dict().items())
    model = _drawn(_Tied(tie=True))
    lottalora.save(model, tmp_path / "tied")
    lottalora.load(_Tied(tie=False), tmp_path / "tied")  # the same value into two tensors: nothing lost
    with torch.device("meta"):
        fresh = _Tied(tie=True)
    lottalora.load(fresh, tmp_path / "tied")  # assign=True: the tie is made again, not two parameters
    assert fresh.head.weight is fresh.emb.weight
    assert len(list(fresh.parameters())) == len(list(model.parameters()))
    x = torch.randn(3, 8)
    assert torch.equal(fresh(x), model(x))


def test_a_seeded_layer_at_two_places_round_trips(tmp_path):
    torch.manual_seed(0)
    model = _drawn(_Tied(tie=False, twice=True))
    lottalora.save(model, tmp_path / "ck")
    x = torch.randn(3, 8)
    for device in ("cpu", "meta"):
        with torch.device(device):
            fresh = _Tied(tie=False, twice=True)
        fresh.a.reseed(9)
        lottalora.load(fresh, tmp_path / "ck")  # every place's "_extra_state" filled: it raised, half loaded
        assert fresh.a is fresh.b and fresh.a.seed == 1
        assert torch.equal(fresh(x), model(x))


def test_a_save_removes_the_trainer_files_an_earlier_save_pretrained_left(tmp_path):
    from transformers import LlamaForCausalLM
    from transformers.trainer_utils import load_sharded_checkpoint

    torch.manual_seed(0)
    converted_tiny_llama().save_pretrained(tmp_path / "m")
    torch.manual_seed(1)
    model = train_language_model(lottalora.convert(LlamaForCausalLM(tiny_llama_config()), rank=4, seed=2), steps=1)
    lottalora.save(model, tmp_path / "m")  # the index would still name the first model's seeds
    assert {p.name for p in (tmp_path / "m").iterdir()} == {CONFIG_NAME, TENSORS_NAME, "config.json",
                                                           "generation_config.json"}
    with pytest.raises(ValueError, match="Can't find a checkpoint index"):
        load_sharded_checkpoint(converted_tiny_llama(), tmp_path / "m")
    rebuilt = lottalora.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 96, (2, 7))
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, model.eval()(ids).logits)
    # Layer states the index named, left unreadable: removed with the index, and the save completes.
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "seeded_layers.safetensors").write_bytes(b"garbage")
    lottalora.save(model, tmp_path / "m")
    assert not (tmp_path / "m" / "seeded_layers.safetensors").exists()
    (tmp_path / "m" / "seeded_layers.safetensors").write_bytes(b"garbage")  # no index: not known ours, kept
    lottalora.save(model, tmp_path / "m")
    assert (tmp_path / "m" / "seeded_layers.safetensors").read_bytes() == b"garbage"
    # A dense model's own weights are another writer's: an adapter saved beside them leaves them.
    torch.manual_seed(2)
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "base")
    base = LlamaForCausalLM.from_pretrained(tmp_path / "base")
    lottalora.save(lottalora.convert(base, rank=4), tmp_path / "base", trainable_only=True)
    assert (tmp_path / "base" / "model.safetensors").is_file()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_tensor_file_gets_the_same_permissions_as_the_config(tmp_path, umask, mode):
    import os
    import stat

    old = os.umask(umask)
    try:
        lottalora.save(torch.nn.Sequential(lottalora.Linear(4, 3, rank=1)), tmp_path / "ck")
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE((tmp_path / "ck" / name).stat().st_mode) for name in (CONFIG_NAME, TENSORS_NAME)}
    assert modes == {CONFIG_NAME: mode, TENSORS_NAME: mode}


def test_compiled_model_saves_plain_names_that_load_anywhere(trained, tmp_path):
    model, _ = trained
    compiled = torch.compile(model)  # saving and loading never run the compiled graph
    lottalora.save(compiled, tmp_path / "c")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "c" / TENSORS_NAME), framework="pt") as f:
        assert not any("_orig_mod" in k for k in f.keys())
    config = json.loads((tmp_path / "c" / CONFIG_NAME).read_text())
    assert not any("_orig_mod" in n for n in [*config["trainable"], *(entry["name"] for entry in config["layers"])])
    ids = torch.arange(24).reshape(2, 12) % 96
    with torch.no_grad():
        want = model(ids).logits
    for fresh in (converted_tiny_llama(), torch.compile(converted_tiny_llama())):
        lottalora.load(fresh, tmp_path / "c")
        with torch.no_grad():
            assert torch.equal(getattr(fresh, "_orig_mod", fresh)(ids).logits, want)
    inner = converted_tiny_llama()
    inner.model.layers[0] = torch.compile(inner.model.layers[0])  # a submodule compiled in place
    lottalora.load(inner, tmp_path / "c")
    lottalora.save(inner, tmp_path / "inner")
    assert json.loads((tmp_path / "inner" / CONFIG_NAME).read_text())["trainable"] == config["trainable"]


def test_trainable_only_checkpoint_holds_the_trained_tensors_and_loads_onto_a_base(trained, tmp_path):
    model, _ = trained
    lottalora.save(model, tmp_path / "t", trainable_only=True)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "t" / TENSORS_NAME), framework="pt") as f:
        stored = set(f.keys())
        assert f.metadata()["contents"] == "trainable"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert stored == trainable and "model.layers.0.mlp.up_proj.beta" not in stored  # frozen (redundant) beta
    base = converted_tiny_llama()
    with torch.no_grad():  # the frozen tensors come from the base: make them the trained model's
        for name, param in base.named_parameters():
            if name not in trainable:
                param.copy_(model.get_parameter(name))
        base.model.layers[0].self_attn.q_proj.lora_B.fill_(3.0)
    lottalora.load(base, tmp_path / "t")
    ids = torch.arange(24).reshape(2, 12) % 96
    with torch.no_grad():
        assert torch.equal(base(ids).logits, model(ids).logits)
    with pytest.raises(TypeError, match="trainable_only must be a bool"):
        lottalora.save(model, tmp_path / "x", trainable_only="yes")
