"""Named adapters in checkpoints: saved with their layers, one saved and loaded by name, and
files without them exactly what earlier builds wrote."""

import json

import pytest
import torch

import lottalora
from lottalora.checkpoint import format as checkpoint_format
from tests.fixtures.compat_model import compat_model
from tests.support.checkpoints import assert_unchanged, snapshot
from tests.support.models import converted_tiny_llama


def _with_adapters(seed: int = 0):
    torch.manual_seed(seed)
    model = converted_tiny_llama().eval()
    lottalora.add_adapter(model, "french", rank=2, alpha=4.0, lora_dropout=0.1)
    lottalora.add_adapter(model, "late", rank=3, use_rslora=True, layers_to_transform=1, layers_pattern="layers")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.1)
    return model


def _logits(model, adapter, ids):
    lottalora.set_adapter(model, adapter)
    with torch.no_grad():
        return model.eval()(ids).logits


def test_a_whole_model_saves_its_named_adapters_and_loads_them_into_a_model_without_them(tmp_path):
    model = _with_adapters()
    lottalora.save(model, tmp_path / "ck")
    config = json.loads((tmp_path / "ck" / checkpoint_format.CONFIG_NAME).read_text())
    q = next(layer for layer in config["layers"] if layer["name"] == "model.layers.1.self_attn.q_proj")
    assert q["adapters"] == {"french": {"rank": 2, "alpha": 4.0, "use_rslora": False, "scaling": 2.0,
                                        "lora_dropout": 0.1},
                             "late": {"rank": 3, "alpha": 3.0, "use_rslora": True, "scaling": 3 / 3 ** 0.5,
                                      "lora_dropout": 0.0}}
    fresh = converted_tiny_llama()  # the same architecture, converted the same way, no named adapters
    lottalora.load(fresh, tmp_path / "ck")
    rebuilt = lottalora.from_pretrained(tmp_path / "ck")
    ids = torch.randint(0, 96, (2, 7))
    for adapter in ("default", "french", "late"):
        want = _logits(model, adapter, ids)
        assert torch.equal(_logits(fresh, adapter, ids), want), adapter
        assert torch.equal(_logits(rebuilt, adapter, ids), want), adapter
    assert fresh.model.layers[0].self_attn.q_proj.named_adapters["french"].lora_dropout == 0.1
    assert lottalora.summary(tmp_path / "ck")["adapters"] == lottalora.summary(model)["adapters"]
    assert "french (8 layers" in lottalora.describe(tmp_path / "ck")


def test_a_model_with_other_adapters_than_the_checkpoint_is_refused_untouched(tmp_path):
    model = _with_adapters()
    lottalora.save(model, tmp_path / "ck")
    other = converted_tiny_llama()
    lottalora.add_adapter(other, "french", rank=5)
    before = snapshot(other)
    with pytest.raises(ValueError, match="adapter 'french' has rank 5 in the model and 2 in the checkpoint"):
        lottalora.load(other, tmp_path / "ck")
    assert_unchanged(other, before)
    lottalora.add_adapter(model, "spanish", rank=2)
    with pytest.raises(ValueError, match=r"has adapters \['spanish'\] in the model, which the checkpoint lacks"):
        lottalora.load(model, tmp_path / "ck")


def test_one_adapter_saves_alone_and_loads_by_name_into_a_model_of_the_same_backbones(tmp_path):
    model = _with_adapters()
    lottalora.save(model, tmp_path / "late", adapter="late")
    config = json.loads((tmp_path / "late" / checkpoint_format.CONFIG_NAME).read_text())
    assert config["adapter"] == "late" and len(config["layers"]) == 4
    assert all(layer["rank"] == 3 and layer["use_rslora"] for layer in config["layers"])
    ids = torch.randint(0, 96, (2, 7))
    want = _logits(model, "late", ids)

    fresh = converted_tiny_llama()
    with torch.no_grad():  # the rest of the model as it was saved (the adapter file does not hold it)
        for name, p in fresh.named_parameters():
            p.copy_(model.get_parameter(name))
    lottalora.load(fresh, tmp_path / "late")  # added as "late", its name in the file
    assert torch.equal(_logits(fresh, "late", ids), want)
    lottalora.load(fresh, tmp_path / "late", adapter="again")  # under any name
    assert torch.equal(_logits(fresh, "again", ids), want)
    assert "adapter 'late' alone" in lottalora.describe(tmp_path / "late")

    lottalora.save(model, tmp_path / "default", adapter="default")
    lottalora.load(fresh, tmp_path / "default")
    assert torch.equal(_logits(fresh, "default", ids), _logits(model, "default", ids))
    with pytest.raises(ValueError, match="holds only the trained tensors"):
        lottalora.from_pretrained(tmp_path / "late")


def test_an_adapter_is_refused_by_a_model_of_other_backbones_or_ranks(tmp_path):
    model = _with_adapters()
    lottalora.save(model, tmp_path / "french", adapter="french")
    other_seed = _with_adapters()
    lottalora.reseed(other_seed, 9)
    before = snapshot(other_seed)
    with pytest.raises(ValueError, match="the adapter was trained on backbone"):
        lottalora.load(other_seed, tmp_path / "french")
    assert_unchanged(other_seed, before)
    with pytest.raises(ValueError, match="adapter 'default' has rank 4 in the model and 2 in the checkpoint"):
        lottalora.load(model, tmp_path / "french", adapter="default")
    lottalora.save(model, tmp_path / "whole")
    with pytest.raises(ValueError, match="holds a whole model, not one adapter"):
        lottalora.load(model, tmp_path / "whole", adapter="french")
    with pytest.raises(ValueError, match="no seeded layer of the model holds it"):
        lottalora.save(model, tmp_path / "x", adapter="spanish")
    with pytest.raises(ValueError, match="two kinds of partial checkpoint"):
        lottalora.save(model, tmp_path / "x", adapter="french", trainable_only=True)


def test_a_file_without_named_adapters_has_exactly_the_keys_of_format_2(tmp_path):
    model = compat_model()
    lottalora.save(model, tmp_path / "ck")
    config = json.loads((tmp_path / "ck" / checkpoint_format.CONFIG_NAME).read_text())
    assert set(config) == checkpoint_format.TOP_KEYS[2]
    assert all(set(layer) == checkpoint_format.LAYER_KEYS[2] for layer in config["layers"])


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["layers"][0].update(adapters={"default": {}}), "adapters lists 'default'"),
    (lambda c: c["layers"][0].update(adapters={"x": {"rank": 0, "alpha": 1.0, "use_rslora": False, "scaling": 0.0,
                                                     "lora_dropout": 0.0}}), r"rank must be an integer in \[1, "),
    (lambda c: c["layers"][0].update(adapters={"x": {"rank": 2, "alpha": 1.0, "use_rslora": False, "scaling": 9.0,
                                                     "lora_dropout": 0.0}}), "scaling must be 0.5"),
    (lambda c: c["layers"][0].update(lora_dropout=0.1), "lora_dropout is recorded only in adapter checkpoints"),
    (lambda c: c.update(adapter="1x"), "adapter must be an adapter name"),
])
def test_edited_adapter_entries_are_refused_by_name(tmp_path, edit, match):
    from tests.support.checkpoints import edit_config

    lottalora.save(compat_model(), tmp_path / "ck")
    edit_config(tmp_path / "ck", edit)
    with pytest.raises(ValueError, match=match):
        lottalora.load(compat_model(), tmp_path / "ck")
