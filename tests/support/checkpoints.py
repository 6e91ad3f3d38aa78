"""Helpers for checkpoint tests: a small model, edits that keep or break the checksums, and
snapshots that show whether a refused load changed anything."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lottalora.checkpoint import config_json
from lottalora.checkpoint import format as checkpoint_format
from tests.fixtures.compat_model import compat_model


def trained_small_model(seed: int = 0) -> torch.nn.Module:
    """compat_model with every parameter drawn away from its init (B = 0, beta = 1, ones)."""
    torch.manual_seed(seed)
    model = compat_model()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def sign(config: dict) -> dict:
    """Give an edited config the checksum a writer would have given it (format version 2). NaN
    and Infinity are not JSON, so a config holding them cannot be signed and is left as it is."""
    if "config_sha256" in config:
        try:
            config["config_sha256"] = config_json.config_checksum(config)
        except ValueError:
            pass
    return config


def edit_config(ck: Path, edit, signed: bool = True) -> None:
    """Apply ``edit(config)`` to the checkpoint's config; ``signed`` recomputes its checksum, as
    someone who knows the format would (the edit must then be refused on its content)."""
    path = ck / checkpoint_format.CONFIG_NAME
    config = json.loads(path.read_text())
    edit(config)
    if signed:
        sign(config)
    path.write_text(json.dumps(config))


def edit_tensors(ck: Path, edit) -> None:
    """Apply ``edit(tensors)`` to the tensor file and record its new size and SHA-256 in the
    (re-signed) config, so that only the tensors' content can refuse it."""
    path = ck / checkpoint_format.TENSORS_NAME
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": checkpoint_format.FORMAT_NAME})
    record_tensor_file(ck)


def record_tensor_file(ck: Path) -> None:
    """Record the tensor file's current size and SHA-256 in the config, re-signed."""
    data = (ck / checkpoint_format.TENSORS_NAME).read_bytes()

    def record(config):
        config["tensors"]["sha256"] = hashlib.sha256(data).hexdigest()
        config["tensors"]["bytes"] = len(data)
    edit_config(ck, record)


def snapshot(model: torch.nn.Module) -> dict:
    """Every state_dict entry (cloned), every tensor's place, and each seeded layer's settings."""
    import lottalora

    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "places": [(n, t.device, t.dtype) for n, t in [*model.named_parameters(), *model.named_buffers()]],
        "layers": [(m.spec, m.alpha, m.use_rslora) for m in model.modules() if isinstance(m, lottalora.Linear)],
    }


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["places"] == before["places"] and after["layers"] == before["layers"]
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        w = after["state"][k]
        assert (v.dtype, v.shape, v.device) == (w.dtype, w.shape, w.device), k
        assert v.device.type == "meta" or torch.equal(v, w), k


def assert_same_model(model: torch.nn.Module, want: torch.nn.Module) -> None:
    """Equal state_dicts (tensors, extra states) and equal outputs."""
    got_sd, want_sd = model.state_dict(), want.state_dict()
    assert got_sd.keys() == want_sd.keys()
    for k in want_sd:
        assert got_sd[k].dtype == want_sd[k].dtype and torch.equal(got_sd[k], want_sd[k]), k
    x = torch.linspace(-2, 2, 24).reshape(3, 8)
    with torch.no_grad():
        assert torch.equal(model(x), want(x))
