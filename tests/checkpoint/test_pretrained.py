"""lottalora.from_pretrained: a converted transformers model rebuilt from its directory alone."""

import json
import subprocess
import sys

import pytest
import torch

import lottalora
from lottalora.checkpoint.format import MODEL_CONFIG_NAME
from tests.support.models import converted_tiny_llama, train_language_model

transformers = pytest.importorskip("transformers")


@pytest.fixture
def saved(tmp_path):
    """A converted tiny LLaMA after two optimizer steps, saved, with its logits on fixed ids."""
    torch.manual_seed(0)
    model = train_language_model(converted_tiny_llama(), steps=2)
    model.model.layers[1].mlp.up_proj.beta.requires_grad_(True)  # a choice made after convert
    lottalora.save(model, tmp_path / "ck")
    with torch.no_grad():
        logits = model.eval()(torch.arange(24).reshape(2, 12) % 96).logits
    return model, tmp_path / "ck", logits


def test_a_fresh_process_rebuilds_the_model_from_the_directory_alone(saved, tmp_path):
    _, ck, want = saved
    script = (  # no test code and no model code: only the directory
        "import sys, torch, lottalora\n"
        "model = lottalora.from_pretrained(sys.argv[1])\n"
        "with torch.no_grad():\n"
        "    torch.save(model(torch.arange(24).reshape(2, 12) % 96).logits, sys.argv[2])\n"
    )
    out = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", script, str(ck), str(out)], check=True, cwd=tmp_path)
    assert torch.equal(torch.load(out), want)


def test_rebuilt_model_loads_state_dicts_all_or_nothing_as_a_converted_one(saved):
    model, ck, _ = saved
    rebuilt = lottalora.from_pretrained(ck)
    sd = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    last = [name for name, m in rebuilt.named_modules() if isinstance(m, lottalora.Linear) and m.rank][-1]
    sd[f"{last}.lora_A"] = torch.zeros(1, sd[f"{last}.lora_A"].shape[1])
    before = {k: v.clone() for k, v in rebuilt.state_dict().items()}
    with pytest.raises(ValueError, match=f"lottalora.Linear '{last}': lora_A has shape"):
        rebuilt.load_state_dict(sd)
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in before.items())


def test_is_trainable_false_by_default_returns_everything_frozen_in_eval_mode(saved):
    _, ck, _ = saved
    rebuilt = lottalora.from_pretrained(ck)
    assert not rebuilt.training and not any(m.training for m in rebuilt.modules())
    assert not any(p.requires_grad for p in rebuilt.parameters())
    with pytest.raises(TypeError, match="is_trainable must be a bool"):
        lottalora.from_pretrained(ck, is_trainable="yes")


def test_rebuilt_model_trains_what_the_saved_one_trained_and_saves_the_same_record(saved, tmp_path):
    model, ck, _ = saved
    rebuilt = lottalora.from_pretrained(ck, is_trainable=True)
    assert not rebuilt.training and type(rebuilt).__name__ == "LlamaForCausalLM"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, p in rebuilt.named_parameters() if p.requires_grad} == trainable
    assert "model.layers.1.mlp.up_proj.beta" in trainable
    lottalora.save(rebuilt, tmp_path / "again")
    first, again = (json.loads((d / MODEL_CONFIG_NAME).read_text()) for d in (ck, tmp_path / "again"))
    assert again["convert_calls"] == first["convert_calls"] and again["base_config"] == first["base_config"]


def test_plain_transformers_refuses_a_lottalora_directory_with_an_error_naming_it(saved):
    _, ck, _ = saved
    config = json.loads((ck / MODEL_CONFIG_NAME).read_text())
    assert config["model_type"] == "lottalora" and "lottalora.from_pretrained" in config["note"]
    script = (  # a process that never imports lottalora
        "import sys, transformers\n"
        "for auto in (transformers.AutoModelForCausalLM, transformers.AutoConfig):\n"
        "    try:\n"
        "        auto.from_pretrained(sys.argv[1])\n"
        "    except ValueError as error:\n"
        "        assert 'model type `lottalora`' in str(error), error\n"
        "    else:\n"
        "        raise SystemExit('loaded')\n"
        "assert 'lottalora' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script, str(ck)], check=True, cwd=ck.parent)


def test_layers_keep_their_stream_version_init_and_dropout_and_gpt2_its_tie(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=16))
    lottalora.convert(model, rank=2, target_modules=["c_attn"], init="gaussian", lora_dropout=0.1, seed=3)
    lottalora.convert(model, rank=0, target_modules=["mlp.c_fc"], stream_version=1, init="rademacher")
    model = model.to(torch.bfloat16).eval()
    lottalora.save(model, tmp_path / "g")
    rebuilt = lottalora.from_pretrained(tmp_path / "g")
    attn, fc = rebuilt.transformer.h[1].attn.c_attn, rebuilt.transformer.h[1].mlp.c_fc
    assert (attn.stream_version, attn.init, attn.seed, attn.lora_dropout) == (1, "gaussian", 3, 0.1)
    assert (fc.stream_version, fc.init, fc.rank) == (1, "rademacher", 0)
    assert rebuilt.lm_head.weight is rebuilt.transformer.wte.weight
    assert rebuilt.lm_head.weight.dtype == torch.bfloat16 and attn.lora_A.dtype == torch.bfloat16
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, model(ids).logits)


def test_directories_that_cannot_be_rebuilt_say_why(saved, tmp_path):
    model, ck, _ = saved
    lottalora.save(torch.nn.Sequential(lottalora.Linear(4, 3, rank=1)), tmp_path / "plain")
    with pytest.raises(ValueError, match="not a transformers model"):
        lottalora.from_pretrained(tmp_path / "plain")
    # A part of a transformers model (T5's encoder, a T5Stack) is no class from_pretrained builds:
    # it was recorded as one, and the refusal named an architecture transformers does not export.
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=24, num_layers=1, num_heads=2))
    from transformers.models.llama.modeling_llama import LlamaModel, LlamaPreTrainedModel

    class OwnHead(LlamaPreTrainedModel):  # a user's model on a *PreTrainedModel base: no architecture either
        def __init__(self, config):
            super().__init__(config)
            self.model, self.head = LlamaModel(config), torch.nn.Linear(config.hidden_size, 3)
            self.post_init()

    parts = {"part": lottalora.convert(t5, rank=2).get_encoder(),
             "own": lottalora.convert(OwnHead(model.config), rank=2, target_modules=["q_proj"])}
    for name, part in parts.items():
        lottalora.save(part, tmp_path / name)
        assert not (tmp_path / name / MODEL_CONFIG_NAME).exists()
        with pytest.raises(ValueError, match=r"or from a part of one, such as its encoder"):
            lottalora.from_pretrained(tmp_path / name)
    lottalora.save(model, tmp_path / "partial", trainable_only=True)
    with pytest.raises(ValueError, match="only the trained tensors"):
        lottalora.from_pretrained(tmp_path / "partial")
    lottalora.merge_and_unload(model).save_pretrained(tmp_path / "hf")  # a plain model: transformers' own files
    with pytest.raises(ValueError, match="save_pretrained"):
        lottalora.from_pretrained(tmp_path / "hf")
    config = json.loads((ck / MODEL_CONFIG_NAME).read_text())
    config["architecture"] = "os.system"
    (ck / MODEL_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a model class of transformers"):
        lottalora.from_pretrained(ck)


@pytest.mark.parametrize("arguments, error, match", [
    ({"device": 0}, TypeError, r"device must be a torch\.device or its name .*got 0 \(int\)"),
    ({"device": "bogus"}, ValueError, r"device must be a torch\.device or its name .*got 'bogus'"),
    ({"device": "cuda"}, ValueError, r"device='cuda' asks for a CUDA device, and none is available"),
    ({"dtype": "float16"}, TypeError, r"dtype must be a floating-point torch\.dtype .*got 'float16': give "
                                      r"torch\.float16"),
    ({"dtype": torch.int32}, TypeError, r"dtype must be a floating-point torch\.dtype .*got torch\.int32"),
    # floating point, but torch's default dtype does not take it ("couldn't find storage object")
    ({"dtype": torch.float8_e4m3fn}, TypeError, r"dtype must be a floating-point torch\.dtype that seeded layers "
                                                r"compute in \(torch\.float32, .*\), got torch\.float8_e4m3fn"),
])
def test_bad_device_and_dtype_arguments_are_named_before_anything_is_read(arguments, error, match, tmp_path,
                                                                         monkeypatch):
    # torch's own errors (an AssertionError for CUDA, "invalid dtype object") came from deep in
    # the build and named neither the argument nor what it takes.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(error, match=match):
        lottalora.from_pretrained(tmp_path / "not read", **arguments)


@pytest.mark.parametrize("dtype", ["int64", "float8_e4m3fn"])
def test_a_config_json_dtype_that_is_not_floating_is_refused_by_name(tmp_path, dtype):
    from lottalora.checkpoint import model_config

    config = {"model_type": model_config.MODEL_TYPE, "lottalora_format": model_config.MODEL_FORMAT,
              "lottalora_format_version": model_config.MODEL_FORMAT_VERSION, "architecture": "LlamaForCausalLM",
              "base_config": {}, "dtype": dtype, "convert_calls": []}
    (tmp_path / MODEL_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"checkpoint .*: config\.json's dtype must be a floating-point torch\.dtype "
                                         rf".*got torch\.{dtype}"):
        model_config.read_model_config(tmp_path)
    config["dtype"] = "bfloat16"
    (tmp_path / MODEL_CONFIG_NAME).write_text(json.dumps(config))
    assert model_config.read_model_config(tmp_path)["dtype"] == "bfloat16"


@pytest.fixture
def untrained(tmp_path):
    """A converted tiny LLaMA saved as it was converted."""
    torch.manual_seed(0)
    lottalora.save(converted_tiny_llama(), tmp_path / "ck")
    return tmp_path / "ck"


def _refused_by_both(ck, match):
    """lottalora.from_pretrained and the Auto class refuse ``ck`` with a ValueError matching ``match``."""
    for load in (lottalora.from_pretrained, transformers.AutoModelForCausalLM.from_pretrained):
        with pytest.raises(ValueError, match=match):
            load(ck)


@pytest.mark.parametrize("edit, match", [
    (lambda text: text.replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": NaN'), "NaN is not a JSON number"),
    (lambda text: text.replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-06, "rms_norm_eps": 1e-06'),
     "duplicate key 'rms_norm_eps'"),
])
def test_config_json_is_parsed_as_strictly_as_the_checkpoint_config(untrained, edit, match):
    # json.loads took NaN (an rms_norm_eps of NaN loaded, and every logit was NaN) and kept the
    # last of repeated keys. transformers writes neither for its configs.
    path = untrained / MODEL_CONFIG_NAME
    text = path.read_text()
    assert edit(text) != text
    path.write_text(edit(text))
    _refused_by_both(untrained, rf"checkpoint .*: config\.json is not valid JSON \(.*{match}")


@pytest.mark.parametrize("text, kind", [("[{}]", "an array"), ("null", "null"), ('"x"', "a string")])
def test_a_config_json_that_is_not_an_object_is_refused_by_name(untrained, text, kind):
    (untrained / MODEL_CONFIG_NAME).write_text(text)
    with pytest.raises(ValueError, match=f"checkpoint .*: config\\.json must be a JSON object, got {kind}"):
        lottalora.from_pretrained(untrained)


def _edit_model_config(ck, edit):
    path = ck / MODEL_CONFIG_NAME
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("edit, match", [
    # PreTrainedModel has no config class: AttributeError on None
    (lambda c: c.update(architecture="PreTrainedModel"),
     r"architecture 'PreTrainedModel' is not a model class of transformers .*one with a config class"),
    # transformers' StrictDataclassFieldValidationError
    (lambda c: c["base_config"].update(hidden_size="16"),
     r"config\.json's base_config does not make a LlamaConfig \(StrictDataclassFieldValidationError: .*hidden_size"),
    # KeyError 'bogus' from building the model
    (lambda c: c["base_config"].update(hidden_act="bogus"),
     r"config\.json's base_config does not build a LlamaForCausalLM \(KeyError: .*bogus"),
])
def test_a_config_json_that_cannot_build_its_architecture_is_refused_naming_it(untrained, edit, match):
    _edit_model_config(untrained, edit)
    _refused_by_both(untrained, f"checkpoint .*: {match}")


@pytest.mark.parametrize("dropout", [5.0, -0.5, 1.0, "x", None, True])
def test_a_convert_calls_lora_dropout_that_is_not_a_probability_is_refused_naming_the_key(untrained, dropout):
    # It was restored as float(dropout): 5.0, -0.5 and 1.0 (every adapter's input zeroed while
    # training) loaded without a word; "x" and None raised from float().
    _edit_model_config(untrained, lambda c: c["convert_calls"][0]["arguments"].update(lora_dropout=dropout))
    _refused_by_both(untrained, r"checkpoint .*: config\.json convert_calls\[0\]\.arguments: lora_dropout must be a "
                                r"probability in \[0, 1\)")

@pytest.mark.parametrize("edit, match", [
    (lambda call: call["converted"].append(5),
     r"config\.json has a malformed convert call .*converted: a list of names"),
    (lambda call: call["converted"].append("model.nope"),
     r"config\.json records a convert call on '' that converted 'model\.nope', not a module of LlamaForCausalLM"),
    (lambda call: call.update(module="model"),
     r"config\.json records a convert call on 'model' that converted 'model\.layers\..*', not a module of LlamaModel"),
])
def test_a_convert_call_naming_what_is_not_a_module_is_refused_by_name(untrained, edit, match):
    _edit_model_config(untrained, lambda c: edit(c["convert_calls"][0]))
    _refused_by_both(untrained, f"checkpoint .*: {match}")


@pytest.mark.parametrize("text, match", [
    ("[]", "generation_config.json must be a JSON object, got an array"),  # was TypeError from transformers
    ('{"temperature": NaN}', r"generation_config.json is not valid JSON \(NaN is not a JSON number\)"),
])
def test_a_generation_config_that_is_not_a_strict_json_object_is_refused_by_name(tmp_path, text, match):
    torch.manual_seed(0)
    converted_tiny_llama().save_pretrained(tmp_path / "ck")
    (tmp_path / "ck" / "generation_config.json").write_text(text)
    _refused_by_both(tmp_path / "ck", f"checkpoint .*: {match}")


def test_a_generation_config_that_is_a_directory_is_named_not_skipped(tmp_path):
    """It was skipped without a word: the model came back with default generation settings."""
    torch.manual_seed(0)
    converted_tiny_llama().save_pretrained(tmp_path / "ck")
    (tmp_path / "ck" / "generation_config.json").unlink(missing_ok=True)
    (tmp_path / "ck" / "generation_config.json").mkdir()
    _refused_by_both(tmp_path / "ck", "checkpoint .*: generation_config.json exists but is a directory")


def test_tensor_shapes_are_checked_against_the_meta_built_model_before_it_is_materialized(untrained, monkeypatch):
    # A one-line config.json edit (a vocab_size far beyond the stored embeddings') had materialize
    # allocate the embeddings and head of that size before the load refused the shapes.
    from lottalora.checkpoint import pretrained

    def materialize(*args, **kwargs):
        raise AssertionError("materialized before the tensors' shapes were checked")

    monkeypatch.setattr(pretrained, "materialize", materialize)
    _edit_model_config(untrained, lambda c: c["base_config"].update(vocab_size=30_000_000))
    _refused_by_both(untrained, r"checkpoint .*: tensor '(lm_head|model\.embed_tokens)\.weight' has shape \(96, 48\), "
                                r"the model has \(30000000, 48\)")
