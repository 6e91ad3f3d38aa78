"""summary(dir), describe(dir) and `lottalora info DIR` read a checkpoint without a model and run
the checks of lottalora.load that need none: they refuse what load refuses there, accept what it
accepts, and leave to load what only the model can tell (its other tensors, a conv's groups)."""

import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import lottalora
from lottalora.checkpoint.format import TENSORS_NAME
from lottalora.cli import main
from tests.support.checkpoints import edit_config, record_tensor_file, trained_small_model
from tests.support.processes import FIXTURES


def _dora_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(lottalora.Linear(8, 6, rank=2, use_dora=True, seed=3), nn.Tanh(), lottalora.Linear(6, 4))


def _named_model(seed=0):
    model = trained_small_model(seed)
    return lottalora.add_adapter(model, "extra", rank=3, target_modules=["0", "2"])


def _conv_model(seed=0, groups=1):
    torch.manual_seed(seed)
    return nn.Sequential(lottalora.Conv1d(4, 4, 3, padding=1, groups=groups, rank=2, seed=5), nn.Flatten(),
                         lottalora.Linear(20, 3, rank=1))


class _Tied(nn.Module):
    """A seeded layer between an embedding and a head tied to it (stored once, and an alias)."""

    def __init__(self):
        super().__init__()
        self.emb, self.a, self.head = nn.Embedding(5, 8), lottalora.Linear(8, 8, rank=2), nn.Linear(8, 5, bias=False)
        self.head.weight = self.emb.weight


def _shared_layer_model():
    layer = lottalora.Linear(4, 4, rank=1)
    return nn.Sequential(layer, nn.Tanh(), layer)  # one layer at two places: its tensors under both names


def _edit_tensors(ck, edit=None, metadata=None):
    """Rewrite the tensor file with ``edit(tensors)`` and ``metadata(metadata)`` applied (the
    file's own metadata, "contents" included, kept otherwise), its size and SHA-256 recorded."""
    path = ck / TENSORS_NAME
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    tensors = load_file(str(path))
    if edit is not None:
        edit(tensors)
    if metadata is not None:
        metadata(meta)
    save_file(tensors, str(path), metadata=meta)
    record_tensor_file(ck)


def _layer(index, **changes):
    return lambda c: c["layers"][index].update(changes)


def _rename(tensors, old, new):
    tensors[new] = tensors.pop(old)


def _add_conv_adapter(config):
    config["layers"][0]["adapters"] = {"x": {"rank": 1, "alpha": 1.0, "use_rslora": False, "scaling": 1.0,
                                             "lora_dropout": 0.0}}


# (model factory, save keyword arguments, config edit, tensor edit, metadata edit, what the readers say)
REFUSED = {
    "a changed fingerprint": (trained_small_model, {}, _layer(0, fingerprint="0" * 16), None, None,
                              "layer '0': the backbone fingerprint differs"),
    "a layer's stream_version 2 -> 1": (trained_small_model, {}, _layer(2, stream_version=1), None, None,
                                        "layer '3': the backbone fingerprint differs"),
    "contents 'weird'": (trained_small_model, {}, None, None, lambda m: m.update(contents="weird"),
                         "says it holds 'weird' tensors"),
    "contents 'adapter' in a whole-model file": (trained_small_model, {}, None, None,
                                                 lambda m: m.update(contents="adapter"),
                                                 "disagree on whether it holds one adapter"),
    "an adapter file whose metadata lost its contents": (_named_model, {"adapter": "extra"}, None, None,
                                                  lambda m: m.pop("contents"),
                                                  "disagree on whether it holds one adapter"),
    "a missing beta": (trained_small_model, {}, None, lambda t: t.pop("0.beta"), None, r"missing \['0.beta'\]"),
    "a missing lora_B": (trained_small_model, {}, None, lambda t: t.pop("2.lora_B"), None, r"missing \['2.lora_B'\]"),
    "a renamed lora_A": (trained_small_model, {}, None, lambda t: _rename(t, "0.lora_A", "0.lora_a"), None,
                         r"missing \['0.lora_A'\], unexpected \['0.lora_a'\]"),
    "an extra tensor in a seeded layer": (trained_small_model, {}, None, lambda t: t.update({"0.zzz": torch.ones(2)}),
                                          None, r"unexpected \['0.zzz'\]"),
    "a bias the config says the layer lacks": (trained_small_model, {}, _layer(0, bias=False), None, None,
                                               r"unexpected \['0.bias'\]"),
    "a lora_A of another shape": (trained_small_model, {}, None, lambda t: t.update({"0.lora_A": torch.ones(2, 7)}),
                                  None, r"'0.lora_A' has shape \(2, 7\)"),
    "an alias shadowing a stored tensor": (trained_small_model, {}, lambda c: c["aliases"].update({"0.beta": "0.bias"}),
                                           None, None, "alias '0.beta' shadows a tensor"),
    "a missing DoRA magnitude": (_dora_model, {}, None, lambda t: t.pop("0.lora_magnitude"), None,
                                 r"missing \['0.lora_magnitude'\]"),
    "a missing named adapter tensor": (_named_model, {}, None, lambda t: t.pop("2.lora_adapters.extra.lora_B"), None,
                                       r"missing \['2.lora_adapters.extra.lora_B'\]"),
    "named adapter tensors the config does not list": (_named_model, {}, lambda c: c["layers"][1].pop("adapters"),
                                                       None, None, r"unexpected \['2.lora_adapters.extra.lora_A'"),
    "named adapters listed on a seeded conv": (_conv_model, {}, _add_conv_adapter, None, None,
                                               "'0' is a seeded convolution, which holds no named adapters"),
    "a conv lora_B that no groups gives": (_conv_model, {}, None, lambda t: t.update({"0.lora_B": torch.ones(4, 3, 1)}),
                                           None, r"'0.lora_B' has shape \(4, 3, 1\)"),
    "an unexpected tensor in a trainable-only file": (trained_small_model, {"trainable_only": True}, None,
                                                      lambda t: t.update({"2.zzz": torch.ones(1)}), None,
                                                      r"unexpected \['2.zzz'\]"),
    "an extra tensor in an adapter file": (_named_model, {"adapter": "extra"}, None,
                                           lambda t: t.update({"zzz": torch.ones(1)}), None, "unexpected"),
    "a missing tensor in an adapter file": (_named_model, {"adapter": "extra"}, None,
                                            lambda t: t.pop("0.lora_B"), None, r"missing \['0.lora_B'\]"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_readers_refuse_what_load_refuses_without_a_model(tmp_path, capsys, case):
    build, save_kwargs, config_edit, tensor_edit, metadata_edit, match = REFUSED[case]
    ck = tmp_path / "ck"
    lottalora.save(build(), ck, **save_kwargs)
    if tensor_edit or metadata_edit:
        _edit_tensors(ck, tensor_edit, metadata_edit)
    if config_edit:
        edit_config(ck, config_edit)  # re-signed: only the content can refuse it
    with pytest.raises(ValueError):
        lottalora.load(build(seed=1), ck)
    with pytest.raises(ValueError, match=match):
        lottalora.summary(ck)
    with pytest.raises(ValueError, match=match):
        lottalora.describe(ck)
    assert main(["info", str(ck)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint ") and len(err.splitlines()) == 1


ACCEPTED = {
    "whole": (trained_small_model, {}),
    "trainable-only": (trained_small_model, {"trainable_only": True}),
    "DoRA": (_dora_model, {}),
    "DoRA, trainable-only": (_dora_model, {"trainable_only": True}),
    "named adapters": (_named_model, {}),
    "a named adapter alone": (_named_model, {"adapter": "extra"}),
    "the default adapter alone": (_named_model, {"adapter": "default"}),
    "a DoRA default adapter alone": (_dora_model, {"adapter": "default"}),
    "a conv": (_conv_model, {}),
    "a grouped conv": (lambda seed=0: _conv_model(seed, groups=2), {}),
    "a grouped conv's adapter alone": (lambda seed=0: _conv_model(seed, groups=2), {"adapter": "default"}),
    "tied weights": (lambda seed=0: _Tied(), {}),
    "one layer at two places": (lambda seed=0: _shared_layer_model(), {}),
    "a model that is one seeded layer": (lambda seed=0: lottalora.Linear(4, 3, rank=1), {}),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_the_readers_accept_what_load_accepts(tmp_path, capsys, case):
    build, save_kwargs = ACCEPTED[case]
    lottalora.save(build(), tmp_path / "ck", **save_kwargs)
    lottalora.load(build(seed=1), tmp_path / "ck")
    lottalora.summary(tmp_path / "ck")
    assert main(["info", str(tmp_path / "ck")]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("fixture", ["format_v1/checkpoint", "format_v2/checkpoint", "format_v2_features/checkpoint",
                                     "format_v2_features/adapter_extra", "checkpoint_v1"])
def test_the_readers_accept_every_committed_format(capsys, fixture):
    lottalora.summary(FIXTURES / fixture)
    assert main(["info", str(FIXTURES / fixture)]) == 0, capsys.readouterr().err


def test_a_trainable_only_file_may_lack_the_frozen_beta(tmp_path):
    model = trained_small_model()
    model[0].beta.requires_grad_(False)
    lottalora.save(model, tmp_path / "ck", trainable_only=True)
    assert math.isnan(lottalora.summary(tmp_path / "ck")["layers"][0]["beta"])  # the file holds no value for it


@pytest.mark.parametrize("build, edit", [
    (trained_small_model, lambda t: t.update(zzz=torch.zeros(3))),  # the model's own tensors: known to it alone
    (trained_small_model, lambda t: t.pop("4.weight")),
    (_conv_model, lambda t: t.update({"0.lora_B": torch.ones(4, 1, 1)})),  # groups=2's shape: groups is not recorded
], ids=["an extra tensor outside the seeded layers", "a missing tensor outside them", "a conv lora_B of other groups"])
def test_what_only_the_model_can_tell_is_left_to_load(tmp_path, build, edit):
    lottalora.save(build(), tmp_path / "ck")
    _edit_tensors(tmp_path / "ck", edit)
    lottalora.summary(tmp_path / "ck")
    with pytest.raises(ValueError, match="tensors differ from the model's|has shape"):
        lottalora.load(build(seed=1), tmp_path / "ck")
