"""Stream versions: today's default is v2, and everything written with v1 keeps loading as v1.

The fixtures in tests/fixtures/checkpoint_v1 were written by lottalora before stream v2 existed
(commit a3f73d9): a two-layer MLP with a v1 rademacher layer and a v1 gaussian layer, saved with
``lottalora.save``, its ``state_dict`` (as safetensors) and its outputs on a fixed input.
"""


import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import lottalora
from lottalora_kernels.stream import spec
from tests.support.processes import FIXTURES as ALL_FIXTURES

FIXTURES = ALL_FIXTURES / "checkpoint_v1"


def _mlp_converted_today():
    model = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 6))
    lottalora.convert(model, rank=2, seed=1, target_modules=["0"])
    lottalora.convert(model, rank=3, seed=1, target_modules=["2"])
    return model


def _assert_fixture_outputs(got: torch.Tensor, want: torch.Tensor) -> None:
    # The fixture's outputs were computed by another CPU, whose float32 matmul may round a
    # last bit differently; a backbone drawn from any other stream would be off by O(1).
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-6)


def test_default_layer_is_stream_v2_binary_and_gaussian_means_v1():
    layer = lottalora.Linear(64, 32)
    assert (layer.stream_version, layer.init) == (2, "rademacher") == (spec.STREAM_VERSION, "rademacher")
    w = layer.backbone_weight()
    assert set(torch.unique(w).tolist()) == {-1 / 8, 1 / 8}
    assert lottalora.Linear(64, 32, init="gaussian").stream_version == 1
    assert lottalora.Linear(64, 32, stream_version=1).init == "gaussian"
    v1 = lottalora.Linear(64, 32, init="rademacher", stream_version=1)
    assert not torch.equal(v1.backbone_weight(), lottalora.Linear(64, 32, init="rademacher").backbone_weight())
    assert "stream_version=2" in repr(layer)


@pytest.mark.parametrize("kwargs,match", [(dict(stream_version=3), "stream_version"),
                                          (dict(stream_version=2, init="gaussian"), "not provided"),
                                          (dict(init="normal"), "init")])
def test_bad_version_or_init_is_refused_with_its_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lottalora.Linear(8, 8, **kwargs)
    with pytest.raises(ValueError, match=match):
        lottalora.convert(nn.Sequential(nn.Linear(8, 8)), **kwargs)


def test_v1_checkpoint_directory_loads_as_v1_with_identical_outputs():
    model = _mlp_converted_today()
    assert {m.stream_version for m in model.modules() if isinstance(m, lottalora.Linear)} == {2}
    lottalora.load(model, FIXTURES)
    layers = [m for m in model.modules() if isinstance(m, lottalora.Linear)]
    assert [(m.stream_version, m.init, m.seed) for m in layers] == [(1, "rademacher", 99), (1, "gaussian", 7)]
    expected = load_file(str(FIXTURES / "expected_outputs.safetensors"))
    with torch.no_grad():
        _assert_fixture_outputs(model(expected["x"]), expected["y"])


def test_v1_state_dict_loads_as_v1_with_identical_outputs():
    model = _mlp_converted_today()
    model.load_state_dict(load_file(str(FIXTURES / "state_dict_v1.safetensors")))
    assert [m.stream_version for m in model.modules() if isinstance(m, lottalora.Linear)] == [1, 1]
    expected = load_file(str(FIXTURES / "expected_outputs.safetensors"))
    with torch.no_grad():
        _assert_fixture_outputs(model(expected["x"]), expected["y"])


def test_convert_takes_a_stream_version_and_a_v2_checkpoint_round_trips(tmp_path):
    model = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 6))
    lottalora.convert(model, rank=2, seed=5, stream_version=1)
    assert [m.init for m in model.modules() if isinstance(m, lottalora.Linear)] == ["gaussian", "gaussian"]
    model = _mlp_converted_today()
    lottalora.save(model, tmp_path / "ck")
    fresh = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 6))
    lottalora.convert(fresh, rank=2, seed=1, stream_version=1, target_modules=["0"])
    lottalora.convert(fresh, rank=3, seed=1, stream_version=1, target_modules=["2"])
    lottalora.load(fresh, tmp_path / "ck")
    assert [m.stream_version for m in fresh.modules() if isinstance(m, lottalora.Linear)] == [2, 2]
    x = torch.randn(4, 12)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
