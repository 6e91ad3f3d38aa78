"""What earlier builds wrote keeps loading, with the outputs recorded when it was written.

tests/fixtures/format_v<N>/ hold a checkpoint directory, a torch.save'd state_dict and an input
with its output, written once by tests/fixtures/make_format_fixture.py and never regenerated.
"""


import pytest
import torch
from safetensors.torch import load_file

import lottalora
from tests.fixtures.compat_model import add_features_adapter, compat_model, features_model
from tests.support.checkpoints import assert_same_model
from tests.support.processes import FIXTURES

FORMATS = ["format_v1", "format_v2"]


def _expected(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    e = load_file(str(FIXTURES / name / "expected.safetensors"))
    return e["x"], e["y"]


def _output(model, x):
    with torch.no_grad():
        return model(x)


def _same_outputs(got: torch.Tensor, recorded: torch.Tensor) -> bool:
    """The recorded outputs to float32 rounding: what loads is exact (the parameters, and the
    backbone bit for bit), but a later build may sum a product in another order (the torch
    backend's table-lookup product for a few rows, say), which moves the last bits."""
    return torch.allclose(got, recorded, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("meta", [False, True])
@pytest.mark.parametrize("name", FORMATS)
def test_checkpoint_directories_load_with_their_recorded_outputs(name, meta):
    x, y = _expected(name)
    if meta:
        with torch.device("meta"):
            model = compat_model(alpha_rank2=None, rslora_rank4=False)
    else:
        model = compat_model(alpha_rank2=None, rslora_rank4=False)  # alpha and rsLoRA come from the file
    lottalora.load(model, FIXTURES / name / "checkpoint")
    assert _same_outputs(_output(model, x), y)
    assert (model[0].alpha, model[2].use_rslora) == (5.0, True)


@pytest.mark.parametrize("name", FORMATS)
def test_state_dicts_load_with_their_recorded_outputs(name):
    x, y = _expected(name)
    state = torch.load(FIXTURES / name / "state_dict.pt", weights_only=True)
    model = compat_model()  # the saved model's alpha and rsLoRA: layout 1 does not carry them
    model.load_state_dict(state)
    assert _same_outputs(_output(model, x), y)


def test_layout_2_state_dicts_carry_alpha_and_rslora():
    x, y = _expected("format_v2")
    model = compat_model(alpha_rank2=None, rslora_rank4=False)
    model.load_state_dict(torch.load(FIXTURES / "format_v2" / "state_dict.pt", weights_only=True))
    assert _same_outputs(_output(model, x), y)


def test_a_layout_1_state_dict_leaves_alpha_as_the_layer_has_it():
    model = compat_model(alpha_rank2=7.0)
    model.load_state_dict(torch.load(FIXTURES / "format_v1" / "state_dict.pt", weights_only=True))
    assert model[0].alpha == 7.0


def test_a_format_1_checkpoint_saved_again_is_the_same_model(tmp_path):
    old = compat_model(alpha_rank2=None)
    lottalora.load(old, FIXTURES / "format_v1" / "checkpoint")
    lottalora.save(old, tmp_path / "ck")
    again = compat_model(alpha_rank2=None)
    lottalora.load(again, tmp_path / "ck")
    assert_same_model(again, old)
    assert "lottalora-seed-only v1" in lottalora.describe(FIXTURES / "format_v1" / "checkpoint")


def _features_expected():
    e = load_file(str(FIXTURES / "format_v2_features" / "expected.safetensors"))
    return e["x"], e["y_default"], e["y_extra"]


@pytest.mark.parametrize("meta", [False, True])
def test_format_2s_later_features_load_with_their_recorded_outputs(meta):
    """format_v2_features/ (make_features_fixture.py): a DoRA conv and its weight_shape, a DoRA
    Linear, named adapters with their own rank, alpha, rsLoRA and dropout, written once: a model
    of that architecture (its named adapter added with other options, which the file's
    overrule) gives the recorded outputs with either adapter active."""
    x, y_default, y_extra = _features_expected()

    def build():
        model = features_model()
        lottalora.add_adapter(model, "extra", rank=2, target_modules=["2", "4"], rank_pattern={"4": 1})
        return model
    if meta:
        with torch.device("meta"):
            model = build()
    else:
        model = build()
    lottalora.load(model, FIXTURES / "format_v2_features" / "checkpoint")
    model.eval()
    assert _same_outputs(_output(model, x), y_default)
    extra = model[2].named_adapters["extra"]
    assert (extra.alpha, extra.use_rslora, extra.lora_dropout) == (3.0, True, 0.05)
    lottalora.set_adapter(model, "extra")
    assert _same_outputs(_output(model, x), y_extra)


def test_format_2s_adapter_file_loads_as_a_new_named_adapter():
    x, _, y_extra = _features_expected()
    model = add_features_adapter(features_model())
    lottalora.load(model, FIXTURES / "format_v2_features" / "checkpoint")
    lottalora.delete_adapter(model, "extra")
    lottalora.load(model, FIXTURES / "format_v2_features" / "adapter_extra", adapter="extra")
    model.eval()
    lottalora.set_adapter(model, "extra")
    assert _same_outputs(_output(model, x), y_extra)
    assert model[4].named_adapters["extra"].rank == 1
