"""The Hugging Face round trip: a converted model saved by transformers' own paths
(save_pretrained, push_to_hub, the Trainer) or by lottalora.save comes back through the Auto
classes with the same logits, or is refused by name; never as a silently random model."""

import copy
import json
import pickle
import re
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import lottalora
from lottalora.checkpoint import format as checkpoint_format
from tests.support.models import converted_tiny_llama, tiny_llama_config

transformers = pytest.importorskip("transformers")


def _trained(model, seed: int = 0):
    """Every parameter drawn away from its init (B = 0 and beta = 1 would hide a lost adapter)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.05)
    return model.eval()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=16))
    return lottalora.convert(model, rank=2, trainable_modules=["wte", "ln_f"])


def _bert(head: bool):
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=40, max_position_embeddings=16, num_labels=3)
    model = (BertForSequenceClassification if head else BertModel)(config)
    return lottalora.convert(model, rank=2, trainable_modules=["classifier"] if head else None)


CASES = {  # name: (build, Auto class, the output compared)
    "llama": (converted_tiny_llama, "AutoModelForCausalLM", "logits"),
    "gpt2": (_gpt2, "AutoModelForCausalLM", "logits"),
    "bert-classifier": (lambda: _bert(True), "AutoModelForSequenceClassification", "logits"),
    "bert": (lambda: _bert(False), "AutoModel", "last_hidden_state"),
}


def _output(model, what: str, ids):
    with torch.no_grad():
        return getattr(model(ids), what)


@pytest.mark.parametrize("writer", ["save_pretrained", "lottalora.save"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_auto_classes_rebuild_a_converted_model_with_the_same_outputs(case, writer, tmp_path):
    build, auto_name, what = CASES[case]
    model = _trained(build())
    if writer == "save_pretrained":
        model.save_pretrained(tmp_path / "m")
    else:
        lottalora.save(model, tmp_path / "m")
    rebuilt = getattr(transformers, auto_name).from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 50, (2, 9))
    assert type(rebuilt).__name__ == type(model).__name__ and not rebuilt.training
    assert torch.equal(_output(rebuilt, what, ids), _output(model, what, ids))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, p in rebuilt.named_parameters() if p.requires_grad} == trained  # as it trained when saved
    if case == "gpt2":
        assert rebuilt.lm_head.weight is rebuilt.transformer.wte.weight
    rebuilt.save_pretrained(tmp_path / "again")  # the rebuilt model saves as a lottalora directory too
    again = getattr(transformers, auto_name).from_pretrained(tmp_path / "again", is_trainable=False)
    assert torch.equal(_output(again, what, ids), _output(model, what, ids))
    assert not any(p.requires_grad for p in again.parameters())


def test_save_pretrained_writes_a_lottalora_directory_and_the_files_the_trainer_reads(tmp_path):
    model = _trained(converted_tiny_llama())
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"stale")  # an earlier plain save of the model
    model.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert files == {checkpoint_format.CONFIG_NAME, checkpoint_format.TENSORS_NAME, checkpoint_format.MODEL_CONFIG_NAME,
                     checkpoint_format.SAFE_INDEX_NAME, checkpoint_format.LAYER_STATES_NAME, "generation_config.json"}
    index = json.loads((tmp_path / "m" / checkpoint_format.SAFE_INDEX_NAME).read_text())
    guards = {f"{name}.weight" for name in lottalora.nn.seeded_layers(model)}  # the dense guard of each layer
    assert set(index["weight_map"]) == set(model.state_dict()) | guards
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "lottalora"
    assert "seeded layers: 14" in lottalora.describe(tmp_path / "m")


def test_an_auto_class_that_builds_another_architecture_is_refused_by_name(tmp_path):
    _trained(converted_tiny_llama()).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"holds a LlamaForCausalLM; AutoModel builds \['LlamaModel'\]"):
        transformers.AutoModel.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="does not take .*quantization_config"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", quantization_config={"x": 1})
    with pytest.raises(ValueError, match="use_safetensors=False: a lottalora directory holds its tensors as"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", use_safetensors=False)
    # transformers' options about reading its own weight files say nothing new about safetensors read whole.
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", use_safetensors=True, weights_only=True,
                                                      disable_mmap=True)
    config = transformers.AutoConfig.from_pretrained(tmp_path / "m")
    assert config.architecture == "LlamaForCausalLM"
    with pytest.raises(ValueError, match="describes a saved checkpoint"):
        transformers.AutoModelForCausalLM.from_config(config)


def test_autoconfig_reads_the_architectures_fields_of_a_lottalora_directory(tmp_path):
    """AutoConfig of a lottalora directory reported PreTrainedConfig's defaults (2 labels, not
    an encoder-decoder) and had no vocab_size: code that reads the config before the model saw
    another architecture. Changing a field asks from_pretrained for that change."""
    from transformers import T5Config, T5ForConditionalGeneration

    classifier = _bert(True)
    classifier.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
    classifier.save_pretrained(tmp_path / "bert")
    config = transformers.AutoConfig.from_pretrained(tmp_path / "bert")
    assert (config.num_labels, config.id2label) == (3, {0: "neg", 1: "neu", 2: "pos"})
    assert (config.vocab_size, config.hidden_size, config.is_encoder_decoder) == (50, 32, False)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_field'"):
        config.no_such_field
    config.hidden_dropout_prob = 0.0
    rebuilt = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert", config=config)
    assert rebuilt.config.hidden_dropout_prob == 0.0 and rebuilt.config.id2label[2] == "pos"
    config.num_labels = 5
    with pytest.raises(ValueError, match=r"'classifier\.(weight|bias)' has shape \(3\b"):
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert", config=config)
    _gpt2().save_pretrained(tmp_path / "gpt2")  # fields by the architecture's own names and aliases
    gpt2 = transformers.AutoConfig.from_pretrained(tmp_path / "gpt2")
    assert (gpt2.n_embd, gpt2.hidden_size, gpt2.get_text_config().num_hidden_layers) == (32, 32, 2)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=24, num_layers=1, num_heads=2))
    lottalora.convert(t5, rank=2).save_pretrained(tmp_path / "t5")
    assert transformers.AutoConfig.from_pretrained(tmp_path / "t5").is_encoder_decoder


def test_a_float16_load_keeps_the_modules_transformers_keeps_in_float32(tmp_path):
    """T5 keeps ``wo`` in float32 under a float16 load (its float16 products overflow): the
    lottalora load did not, so a mixed checkpoint came back all float16 and computed otherwise."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=24, num_layers=1, num_heads=2, decoder_start_token_id=0)
    _trained(lottalora.convert(T5ForConditionalGeneration(config), rank=2)).save_pretrained(tmp_path / "fp32")
    half = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "fp32", dtype=torch.float16)
    dense = half.encoder.block[0].layer[1].DenseReluDense
    assert {p.dtype for p in dense.wo.parameters()} == {torch.float32} and dense.wo.weight.dtype == torch.float32
    assert dense.wi.beta.dtype == torch.float16
    half.save_pretrained(tmp_path / "mixed")  # recorded as float16, wo stored in float32
    again = lottalora.from_pretrained(tmp_path / "mixed")
    ids, start = torch.randint(0, 40, (1, 5)), torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, decoder_input_ids=start).logits,
                           half(input_ids=ids, decoder_input_ids=start).logits)
    strict = lottalora.from_pretrained(tmp_path / "fp32", dtype=torch.bfloat16)  # wo is not strict: bf16
    assert strict.encoder.block[0].layer[1].DenseReluDense.wo.beta.dtype == torch.bfloat16
    # Entries may name parameters (RWKV's time_decay), which transformers matches on tensor names.
    from transformers import RwkvConfig, RwkvForCausalLM

    rwkv = RwkvConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, attention_hidden_size=16,
                      intermediate_size=32, context_length=16)
    lottalora.convert(RwkvForCausalLM(rwkv), rank=2).save_pretrained(tmp_path / "rwkv")
    attention = lottalora.from_pretrained(tmp_path / "rwkv", dtype=torch.float16).rwkv.blocks[0].attention
    assert (attention.time_decay.dtype, attention.time_first.dtype, attention.key.beta.dtype) == \
        (torch.float32, torch.float32, torch.float16)


def test_a_converted_model_with_peft_layers_in_it_is_refused_at_save_not_at_load(tmp_path):
    """PEFT on a converted model's dense head: save_pretrained wrote a directory that every load
    then refused (PEFT's state_dict names); it is refused when saving, and PEFT's own save works."""
    peft = pytest.importorskip("peft")
    model = converted_tiny_llama()
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match="holds PEFT's Linear at lm_head: save the converted model without"):
        wrapped.get_base_model().save_pretrained(tmp_path / "inner")
    with pytest.raises(ValueError, match="holds PEFT's PeftModel at its root"):
        lottalora.save(wrapped, tmp_path / "wrapped")
    assert not (tmp_path / "inner").exists() and not (tmp_path / "wrapped").exists()
    wrapped.save_pretrained(tmp_path / "peft")
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()


def test_a_tie_broken_by_set_input_embeddings_saves_as_the_untied_model_it_is(tmp_path):
    """The config still said tie_word_embeddings=True: the reload built one tensor for the two
    names and refused the checkpoint's two values. The record says what the model is."""
    from transformers import LlamaForCausalLM

    config = tiny_llama_config()
    config.tie_word_embeddings = True
    model = lottalora.convert(LlamaForCausalLM(config), rank=2, trainable_modules=["embed_tokens"])
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.set_input_embeddings(torch.nn.Embedding(config.vocab_size, config.hidden_size))
    model.save_pretrained(tmp_path / "m")
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert rebuilt.lm_head.weight is not rebuilt.model.embed_tokens.weight
    ids = torch.randint(0, config.vocab_size, (2, 5))
    assert torch.equal(_output(rebuilt, "logits", ids), _output(model.eval(), "logits", ids))
    _trained(model).model.embed_tokens.weight = model.lm_head.weight  # tied again: saved as tied
    model.save_pretrained(tmp_path / "tied")
    again = lottalora.from_pretrained(tmp_path / "tied")
    assert again.lm_head.weight is again.model.embed_tokens.weight
    # T5 ties whatever its config says: an untied T5 has no directory that loads, so none is written.
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = lottalora.convert(T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=24,
                                                               num_layers=1, num_heads=2)), rank=2)
    t5.set_input_embeddings(torch.nn.Embedding(40, 16))
    with pytest.raises(ValueError, match="T5ForConditionalGeneration ties its input and output embeddings whatever"):
        t5.save_pretrained(tmp_path / "t5")
    assert not (tmp_path / "t5").exists()


def test_configs_holding_infinities_or_several_text_configs_save_and_reload(tmp_path):
    """transformers writes an infinite float as {"__float__": "Infinity"} (Mamba2's
    time_step_limit) and decodes it in its reader: from_pretrained gave the encoded dict to
    from_dict, which refused it. MusicGen has two text configs: asking for "the" text config to
    read its tie flag raised at every save."""
    from transformers import (
        EncodecConfig,
        Mamba2Config,
        Mamba2ForCausalLM,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    mamba = Mamba2Config(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_heads=4, head_dim=8, state_size=8,
                         n_groups=1, expand=2, chunk_size=8)
    model = _trained(lottalora.convert(Mamba2ForCausalLM(mamba), rank=2, target_modules=["in_proj", "out_proj"]))
    model.save_pretrained(tmp_path / "mamba")
    rebuilt = lottalora.from_pretrained(tmp_path / "mamba")
    ids = torch.randint(0, 40, (1, 8))
    assert rebuilt.config.time_step_limit[1] == float("inf")
    assert torch.equal(_output(rebuilt, "logits", ids), _output(model, "logits", ids))
    config_json = tmp_path / "mamba" / "config.json"  # as transformers 4 wrote it: a bare Infinity
    bare = re.sub(r'\{\s*"__float__":\s*"Infinity"\s*\}', "Infinity", config_json.read_text())
    assert "__float__" not in bare and "Infinity" in bare
    config_json.write_text(bare)
    assert lottalora.from_pretrained(tmp_path / "mamba").config.time_step_limit[1] == float("inf")
    t5 = T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=24, num_layers=1, num_heads=2)
    audio = EncodecConfig(hidden_size=8, num_filters=4, codebook_size=16, upsampling_ratios=[2, 2], codebook_dim=8,
                          num_residual_layers=1)
    decoder = MusicgenDecoderConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    ffn_dim=24, num_codebooks=2)
    music = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=audio.to_dict(),
                                                            decoder=decoder.to_dict()))
    lottalora.convert(music, rank=2, target_modules=["q", "v"]).save_pretrained(tmp_path / "music")
    assert type(lottalora.from_pretrained(tmp_path / "music")).__name__ == "MusicgenForConditionalGeneration"


@pytest.mark.parametrize("argument", ["dtype", "torch_dtype"])
def test_from_pretrained_takes_a_dtype_and_a_device_map(argument, tmp_path):
    model = _trained(converted_tiny_llama())
    model.save_pretrained(tmp_path / "m")
    auto = transformers.AutoModelForCausalLM
    half = auto.from_pretrained(tmp_path / "m", **{argument: torch.bfloat16})
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    ids = torch.randint(0, 96, (2, 7))
    want = lottalora.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert torch.equal(_output(half, "logits", ids), _output(want, "logits", ids))
    auto_device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    for device_map, device in (("cpu", torch.device("cpu")), ("auto", auto_device), ({"": "cpu"}, torch.device("cpu"))):
        placed = auto.from_pretrained(tmp_path / "m", device_map=device_map, **{argument: "auto"})
        assert {p.device for p in placed.parameters()} == {device} and placed.hf_device_map
        assert {p.dtype for p in placed.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="spreads the model over several devices"):
        auto.from_pretrained(tmp_path / "m", device_map={"model": "cpu", "lm_head": "meta"})


def test_config_options_reach_the_model_as_transformers_takes_them(tmp_path):
    model = _trained(converted_tiny_llama())
    model.save_pretrained(tmp_path / "m")
    auto, ids = transformers.AutoModelForCausalLM, torch.randint(0, 96, (2, 7))
    # AutoConfig absorbs these into the config it hands the loader; they were dropped there.
    eager = auto.from_pretrained(tmp_path / "m", attn_implementation="eager", output_hidden_states=True)
    assert eager.config._attn_implementation == "eager"
    out = eager(ids)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.logits, _output(model, "logits", ids), rtol=1e-5, atol=1e-5)
    plain = auto.from_pretrained(tmp_path / "m", use_cache=False, pad_token_id=7)  # left to the loader
    assert (plain.config.use_cache, plain.config.pad_token_id) == (False, 7)
    assert torch.equal(_output(plain, "logits", ids), _output(model, "logits", ids))
    rebuilt = lottalora.from_pretrained(tmp_path / "m", config_updates={"attn_implementation": "eager"})
    assert rebuilt.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match=r"config_updates \['use_cachee'\] are not options of LlamaConfig"):
        lottalora.from_pretrained(tmp_path / "m", config_updates={"use_cachee": False})
    with pytest.raises(ValueError, match=r"layer 'model\.layers\.1\..*' is not a module of LlamaForCausalLM"):
        auto.from_pretrained(tmp_path / "m", num_hidden_layers=1)  # a shape the checkpoint does not have
    with pytest.raises(ValueError, match=r"does not take \['shard_everything'\]"):
        auto.from_pretrained(tmp_path / "m", shard_everything=True)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes|size mismatch"):  # the dense class, guarded
        auto.from_pretrained(tmp_path / "m", config=tiny_llama_config())


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(safe_serialization=False), ValueError, "safe_serialization=False"),
    (dict(variant="fp16"), ValueError, "variant='fp16'"),
    (dict(max_shard_size="10KB"), ValueError, "max_shard_size='10KB' is refused: the model's tensors take"),
    (dict(state_dict={}), ValueError, r"not a state dict of this model: it lacks 37 of the model's tensors \(lm_head"),
    (dict(distributed_checkpoint=True), ValueError, "distributed_checkpoint"),
    (dict(shard_everything=True), TypeError, "unexpected arguments"),
])
def test_save_pretrained_refuses_by_name_what_a_lottalora_directory_cannot_be(kwargs, error, match, tmp_path):
    model = converted_tiny_llama()
    with pytest.raises(error, match=match):
        model.save_pretrained(tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()


def test_save_pretrained_within_max_shard_size_writes_one_shard_and_other_ranks_write_nothing(tmp_path):
    model = _trained(converted_tiny_llama())
    model.save_pretrained(tmp_path / "m", max_shard_size="50MB", safe_serialization=True, save_peft_format=True)
    assert (tmp_path / "m" / checkpoint_format.TENSORS_NAME).is_file()
    model.save_pretrained(tmp_path / "other", is_main_process=False)
    assert not (tmp_path / "other").exists()


def test_a_given_state_dict_supplies_the_tensors_as_the_trainer_passes_one(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = _trained(converted_tiny_llama())
    other = _trained(copy.deepcopy(model), seed=1)  # same seeds, other tensors
    ids = torch.randint(0, 96, (2, 7))
    # The Trainer under FSDP's full state dict or DeepSpeed: a state dict taken elsewhere, saved
    # by the main process alone; its tensors are what the directory holds, the seeds the model's.
    model.save_pretrained(tmp_path / "given", state_dict={k: v.clone() for k, v in other.state_dict().items()})
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "given")
    assert torch.equal(_output(rebuilt, "logits", ids), _output(other, "logits", ids))
    assert not torch.equal(_output(rebuilt, "logits", ids), _output(model, "logits", ids))
    # A Trainer holding the model in its torch.compile wrapper passes the wrapper's state dict.
    args = TrainingArguments(str(tmp_path / "run"), report_to=[], use_cpu=True, disable_tqdm=True)
    Trainer(model=torch.compile(model), args=args)._save(str(tmp_path / "compiled"))
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "compiled")
    assert torch.equal(_output(rebuilt, "logits", ids), _output(model, "logits", ids))
    # DDP's names, and GPT-2's tied head: stored once, tied again on load.
    gpt2 = _trained(_gpt2())
    gpt2.save_pretrained(tmp_path / "ddp", state_dict={f"module.{k}": v for k, v in gpt2.state_dict().items()})
    config = json.loads((tmp_path / "ddp" / checkpoint_format.CONFIG_NAME).read_text())
    assert config["aliases"] == {"transformer.wte.weight": "lm_head.weight"}
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ddp")
    assert rebuilt.lm_head.weight is rebuilt.transformer.wte.weight
    assert torch.equal(_output(rebuilt, "logits", ids % 50), _output(gpt2, "logits", ids % 50))


def test_a_given_state_dict_of_another_model_or_of_zero3_placeholders(tmp_path):
    model = _trained(converted_tiny_llama())
    full = {k: v.clone() for k, v in model.state_dict().items()}
    other = converted_tiny_llama()
    other.model.layers[0].self_attn.q_proj.reseed(99)  # same shapes, another backbone there
    with pytest.raises(ValueError, match=r"state_dict\['model\.layers\.0\.self_attn\.q_proj\._extra_state'\] "
                                         "describes another backbone"):
        model.save_pretrained(tmp_path / "other", state_dict=other.state_dict())
    assert not (tmp_path / "other").exists()
    # DeepSpeed ZeRO-3: every rank's parameters are empty placeholders that record their shape,
    # and the Trainer hands the consolidated state dict to the main process.
    ids = torch.randint(0, 96, (2, 7))
    want = _output(model, "logits", ids)
    for param in model.parameters():
        param.ds_shape = param.shape
        param.data = torch.empty(0, dtype=param.dtype)
    model.save_pretrained(tmp_path / "zero3", state_dict=full)
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "zero3")
    assert torch.equal(_output(rebuilt, "logits", ids), want)
    gpt2 = _trained(_gpt2())  # a tied head among the placeholders: still stored once
    full = {k: v.clone() for k, v in gpt2.state_dict().items()}
    for param in gpt2.parameters():
        param.ds_shape = param.shape
        param.data = torch.empty(0, dtype=param.dtype)
    gpt2.save_pretrained(tmp_path / "zero3-gpt2", state_dict=full)
    config = json.loads((tmp_path / "zero3-gpt2" / checkpoint_format.CONFIG_NAME).read_text())
    assert config["aliases"] == {"transformer.wte.weight": "lm_head.weight"}
    # A named adapter of another alpha, and an extra state cast to int32, are not this model's.
    named = converted_tiny_llama()
    lottalora.add_adapter(named, "x", rank=2)
    other = copy.deepcopy(named)
    other.model.layers[0].self_attn.q_proj.named_adapters["x"].alpha = 7.0
    with pytest.raises(ValueError, match=r"lora_adapters\.x\._extra_state'\] describes another backbone or adapter"):
        named.save_pretrained(tmp_path / "named", state_dict=other.state_dict())
    cast = {k: v.to(torch.int32) if k.endswith("_extra_state") else v for k, v in named.state_dict().items()}
    with pytest.raises(ValueError, match=r"is torch\.int32 \(12,\) on cpu: a layer's extra state is torch\.int64"):
        named.save_pretrained(tmp_path / "cast", state_dict=cast)


def _edited(state: dict, key: str, value) -> dict:
    edited = dict(state)
    if value is None:
        del edited[key]
    else:
        edited[key] = value
    return edited


@pytest.mark.parametrize("edit,match", [
    (("model.norm.weight", None), r"lacks 1 of the model's tensors \(model\.norm\.weight\)"),
    (("model.extra", torch.zeros(2)), r"holds 1 the model does not \(model\.extra\)"),
    (("model.norm.weight", torch.ones(47)), r"state_dict\['model\.norm\.weight'\] is torch\.float32 \(47,\) where the "
                                            r"model's is torch\.float32 \(48,\)"),
    (("model.norm.weight", torch.ones(48, dtype=torch.bfloat16)), r"is torch\.bfloat16 \(48,\) where the model's is "
                                                                  r"torch\.float32"),
    (("model.norm.weight", torch.ones(48, device="meta")), "on the meta device"),
    (("model.norm.weight", [1.0] * 48), "is a list, not a tensor"),
])
def test_a_given_state_dict_that_is_not_the_models_is_refused_by_name(edit, match, tmp_path):
    model = converted_tiny_llama()
    with pytest.raises(ValueError, match=match):
        model.save_pretrained(tmp_path / "m", state_dict=_edited(model.state_dict(), *edit))
    assert not (tmp_path / "m").exists()
    gpt2 = _gpt2()
    untied = _edited(gpt2.state_dict(), "lm_head.weight", gpt2.lm_head.weight.detach() + 1)
    with pytest.raises(ValueError, match="are one tensor in the model .tied. but differ in the state dict"):
        gpt2.save_pretrained(tmp_path / "g", state_dict=untied)
    assert not (tmp_path / "g").exists()


def test_push_to_hub_uploads_a_lottalora_directory(tmp_path, monkeypatch):
    import transformers.utils.hub as hub

    class Repo:
        repo_id = "me/seeded"

    uploaded = tmp_path / "uploaded"

    def upload(self, working_dir, repo_id, *args, **kwargs):
        shutil.copytree(working_dir, uploaded)
        return repo_id

    monkeypatch.setattr(hub, "hf_api", lambda: type("Api", (), {"create_repo": lambda self, *a, **k: Repo()})())
    monkeypatch.setattr(hub, "create_and_tag_model_card",
                        lambda *a, **k: type("Card", (), {"save": lambda self, path: None})())
    monkeypatch.setattr(hub.PushToHubMixin, "_upload_modified_files", upload)
    model = _trained(_gpt2())
    model.push_to_hub("me/seeded")
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(uploaded)
    ids = torch.randint(0, 50, (1, 8))
    assert torch.equal(_output(rebuilt, "logits", ids), _output(model, "logits", ids))
    # A Hub id resolves to its snapshot (the folder push_to_hub uploaded, here); transformers
    # itself reads the repository's config.json first, which this test cannot reach offline.
    import huggingface_hub

    from lottalora.checkpoint.transformers_auto import LottaLoraAutoModelForCausalLM

    asked = {}
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kwargs: asked.update(repo_id=repo_id, **kwargs) or str(uploaded))
    from_hub = LottaLoraAutoModelForCausalLM.from_pretrained("me/seeded", revision="main", token="t")
    assert asked == {"repo_id": "me/seeded", "revision": "main", "token": "t", "force_download": False}
    assert torch.equal(_output(from_hub, "logits", ids), _output(model, "logits", ids))


def test_a_converted_model_deepcopies_and_pickles_with_its_save_pretrained_and_merging_drops_it(tmp_path):
    from lottalora.model.pretrained_class import SeededPreTrainedModel

    model = _trained(_gpt2())
    ids = torch.randint(0, 50, (1, 8))
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(other) is type(model) and isinstance(other, SeededPreTrainedModel)
        assert torch.equal(_output(other, "logits", ids), _output(model, "logits", ids))
    copy.deepcopy(model).save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / checkpoint_format.CONFIG_NAME).is_file()
    lottalora.merge_and_unload(model)
    assert type(model) is transformers.GPT2LMHeadModel
    unconverted = transformers.GPT2LMHeadModel(model.config)
    assert type(unconverted) is transformers.GPT2LMHeadModel  # nothing global changed


def _run(script: str, *args) -> str:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


_ROUND_TRIP = """
import sys, torch
{imports}
assert "transformers.models.auto.modeling_auto" not in sys.modules or {transformers_first}
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
lottalora.convert(model, rank=2)
model.save_pretrained(sys.argv[1])
ids = torch.arange(8).reshape(1, 8)
with torch.no_grad():
    assert torch.equal(AutoModelForCausalLM.from_pretrained(sys.argv[1])(ids).logits, model.eval()(ids).logits)
print("ok")
"""


@pytest.mark.parametrize("transformers_first", [False, True])
def test_both_import_orders_register_with_the_auto_classes(transformers_first, tmp_path):
    imports = "from transformers import AutoModelForCausalLM\nimport lottalora" if transformers_first else (
        "import importlib.util, lottalora\nassert 'transformers' not in sys.modules\n"
        "importlib.util.find_spec('transformers.models.auto.modeling_auto')  # looked up, not imported")
    script = _ROUND_TRIP.format(imports=imports, transformers_first=transformers_first)
    assert _run(script, str(tmp_path / "m")).strip() == "ok"


class _RandomTokens(torch.utils.data.Dataset):
    def __init__(self):
        self.ids = torch.randint(0, 96, (16, 12), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _train(output_dir, model, resume=None, steps: int = 4):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(str(output_dir), max_steps=steps, per_device_train_batch_size=4, save_steps=2,
                             learning_rate=1e-2, report_to=[], use_cpu=True, logging_steps=100, disable_tqdm=True,
                             seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=_RandomTokens())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_a_trainer_run_resumes_from_its_checkpoint_and_reloads_exactly(tmp_path):
    torch.manual_seed(0)
    whole = converted_tiny_llama()
    trainer = _train(tmp_path / "whole", whole)
    ck = tmp_path / "whole" / "checkpoint-2"
    assert (ck / checkpoint_format.CONFIG_NAME).is_file() and (ck / checkpoint_format.SAFE_INDEX_NAME).is_file()

    torch.manual_seed(1)  # another init, and another seed for every backbone: the checkpoint's are taken
    from transformers import LlamaForCausalLM

    resumed = LlamaForCausalLM(tiny_llama_config())
    lottalora.convert(resumed, rank=4, seed=5, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj",
                      "o_proj", "gate_proj", "up_proj", "down_proj"], adapter_modules=["q_proj", "k_proj", "v_proj",
                      "o_proj"], trainable_modules=["embed_tokens", "norm", "input_layernorm",
                                                    "post_attention_layernorm", "lm_head"])
    _train(tmp_path / "resumed", resumed, resume=str(ck))
    want, got = whole.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    trainer.save_model(tmp_path / "final")
    ids = torch.randint(0, 96, (2, 7))
    for directory in (tmp_path / "final", tmp_path / "whole" / "checkpoint-4"):
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(directory)
        assert torch.equal(_output(reloaded, "logits", ids), _output(whole.eval(), "logits", ids))


def test_a_dense_class_refuses_a_save_pretrained_directory_that_the_trainer_files_still_load(tmp_path):
    model = _trained(converted_tiny_llama())
    model.save_pretrained(tmp_path / "m")
    # Only the Auto classes know lottalora: the architecture's own class finds every backbone
    # weight the wrong size (the dense guard) instead of loading random ones in their place.
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes|size mismatch"):
        transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m")
    from safetensors.torch import load_file

    files = {*json.loads((tmp_path / "m" / checkpoint_format.SAFE_INDEX_NAME).read_text())["weight_map"].values()}
    state = {k: v for f in files for k, v in load_file(tmp_path / "m" / f).items()}
    assert all(state[f"{name}.weight"].shape == (0,) for name in lottalora.nn.seeded_layers(model))
    torch.manual_seed(3)
    fresh = converted_tiny_llama()
    fresh.load_state_dict(state)  # strict, as the Trainer's files are read: the guards are dropped, nothing else
    ids = torch.randint(0, 96, (2, 7))
    assert torch.equal(_output(fresh.eval(), "logits", ids), _output(model, "logits", ids))
    # A resumed run whose model left a layer dense that the checkpoint seeded: the Trainer loads
    # with strict=False, which a size mismatch still stops (the dense weight would stay random).
    fewer = lottalora.convert(transformers.LlamaForCausalLM(tiny_llama_config()), rank=4, target_modules=["q_proj"])
    with pytest.raises(RuntimeError, match=r"size mismatch for model\.layers\.0\.self_attn\.k_proj\.weight"):
        fewer.load_state_dict(state, strict=False)
    state["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(32, 32)  # a real dense weight stays unexpected
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*q_proj\.weight"):
        fresh.load_state_dict(state)


def _state_of(directory):
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def test_transformers_save_of_a_model_around_converted_layers_is_guarded_against_dense_loads(tmp_path):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    lottalora.convert(model.model, rank=4)  # the submodule alone: model keeps transformers' save_pretrained
    _trained(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(tmp_path / "plain")
    assert len(caught) == 1 and caught[0].filename == __file__  # once a save, at the caller's line
    assert re.search(r"LlamaForCausalLM\.save_pretrained is transformers' own.*convert the whole LlamaForCausalLM "
                     "when you build it", str(caught[0].message))
    state = _state_of(tmp_path / "plain")
    assert all(state[f"{name}.weight"].shape == (0,) for name in lottalora.nn.seeded_layers(model))
    for cls in (LlamaForCausalLM, transformers.AutoModelForCausalLM):  # never the random backbone it used to be
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes|size mismatch"):
            cls.from_pretrained(tmp_path / "plain")
    assert "weight" not in model.model.layers[0].self_attn.q_proj.state_dict()  # only in transformers' files
    torch.manual_seed(1)
    resumed = LlamaForCausalLM(tiny_llama_config())  # what a resumed Trainer run does with the file
    lottalora.convert(resumed.model, rank=4)
    resumed.load_state_dict(state)
    ids = torch.randint(0, 96, (2, 7))
    assert torch.equal(_output(resumed.eval(), "logits", ids), _output(model, "logits", ids))
    lottalora.save(model, tmp_path / "m")  # the whole model, for the Auto classes
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.equal(_output(rebuilt, "logits", ids), _output(model, "logits", ids))
    lottalora.merge_and_unload(model.model)  # dense again: transformers' checkpoint is the whole model
    model.save_pretrained(tmp_path / "merged")
    assert not any(v.numel() == 0 for v in _state_of(tmp_path / "merged").values())
    again = LlamaForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_output(again, "logits", ids), _output(model, "logits", ids), atol=1e-5)


def test_a_users_own_transformers_class_with_seeded_layers_saves_and_loads_through_transformers(tmp_path):
    from transformers import LlamaConfig, PreTrainedModel

    class TinySeeded(PreTrainedModel):  # seeded layers built in: the class itself rebuilds them
        config_class = LlamaConfig

        def __init__(self, config):
            super().__init__(config)
            self.proj = lottalora.Linear(config.hidden_size, config.hidden_size, rank=2, seed=7)
            self.post_init()

        def forward(self, x):
            return self.proj(x)

    model = _trained(TinySeeded(tiny_llama_config()))
    with pytest.warns(UserWarning, match=r"TinySeeded\.save_pretrained is transformers' own"):
        model.save_pretrained(tmp_path / "m")
    again = TinySeeded.from_pretrained(tmp_path / "m")
    x = torch.randn(3, 48)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_the_trainers_sharded_reader_expects_the_guards(tmp_path):
    try:
        from transformers.trainer_utils import load_sharded_checkpoint
    except ImportError:  # transformers 4
        from transformers.modeling_utils import load_sharded_checkpoint
    model = _trained(converted_tiny_llama())
    model.save_pretrained(tmp_path / "m")
    torch.manual_seed(2)
    fresh = converted_tiny_llama()
    loaded = load_sharded_checkpoint(fresh, tmp_path / "m", strict=True)  # no missing, no unexpected key
    assert not loaded.missing_keys and not loaded.unexpected_keys
    ids = torch.randint(0, 96, (2, 7))
    assert torch.equal(_output(fresh.eval(), "logits", ids), _output(model, "logits", ids))
    # A directory written before the guards existed: its index lists none, and none is expected.
    from safetensors.torch import load_file, save_file

    index_path = tmp_path / "m" / checkpoint_format.SAFE_INDEX_NAME
    index = json.loads(index_path.read_text())
    guards = {f"{name}.weight" for name in lottalora.nn.seeded_layers(model)}
    index["weight_map"] = {k: f for k, f in index["weight_map"].items() if k not in guards}
    index_path.write_text(json.dumps(index))
    layer_states = tmp_path / "m" / checkpoint_format.LAYER_STATES_NAME
    save_file({k: v for k, v in load_file(layer_states).items() if v.numel()}, layer_states)
    loaded = load_sharded_checkpoint(converted_tiny_llama(), tmp_path / "m", strict=True)
    assert not loaded.missing_keys and not loaded.unexpected_keys


def test_a_hub_id_resolves_from_the_local_cache_without_the_network(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as an offline user sets it (read once, at import: set both)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = _trained(converted_tiny_llama())
    repo = tmp_path / "cache" / "models--me--seeded"  # huggingface_hub's cache layout for repo "me/seeded"
    model.save_pretrained(repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained("me/seeded", cache_dir=tmp_path / "cache")
    ids = torch.randint(0, 96, (2, 7))
    assert torch.equal(_output(rebuilt, "logits", ids), _output(model, "logits", ids))


def test_a_model_converted_inside_its_torch_compile_wrapper_saves_a_lottalora_directory(tmp_path):
    torch.manual_seed(0)
    compiled = torch.compile(transformers.LlamaForCausalLM(tiny_llama_config()))
    lottalora.convert(compiled, rank=4)  # the wrapper's save_pretrained is the inner model's
    inner = _trained(compiled._orig_mod)
    compiled.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "lottalora"
    assert [c["module"] for c in config["convert_calls"]] == [""]  # the record, found on the inner model
    assert len(config["convert_calls"][0]["converted"]) == 14
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 96, (2, 7))
    assert torch.equal(_output(rebuilt, "logits", ids), _output(inner, "logits", ids))
