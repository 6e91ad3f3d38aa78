"""lottalora.load refuses whatever would load wrong, before it changes the model, on a small
model (no transformers): config values and schema, checksums, dtypes, the meta device."""

import hashlib
import os
import re
import shutil
import struct

import pytest
import torch

import lottalora
from lottalora.checkpoint import files as checkpoint_files
from lottalora.checkpoint.format import CONFIG_NAME, TENSORS_NAME
from tests.fixtures.compat_model import compat_model
from tests.support.checkpoints import (
    assert_same_model,
    assert_unchanged,
    edit_config,
    edit_tensors,
    record_tensor_file,
    snapshot,
    trained_small_model,
)
from tests.support.processes import FIXTURES


@pytest.fixture
def saved(tmp_path):
    model = trained_small_model()
    lottalora.save(model, tmp_path / "ck")
    return model, tmp_path / "ck"


def _refused(ck, match, model=None):
    """Load into a fresh model: ValueError matching ``match``, and the model as it was."""
    model = model if model is not None else trained_small_model(seed=1)
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        lottalora.load(model, ck)
    assert_unchanged(model, before)


def test_a_saved_model_loads_back_equal(saved):
    model, ck = saved
    fresh = trained_small_model(seed=1)
    lottalora.load(fresh, ck)
    assert_same_model(fresh, model)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -1.0, 0, 1e308, True, "4", None])
@pytest.mark.parametrize("signed", [True, False])
def test_bad_alpha_values_in_the_config_are_refused(saved, alpha, signed):
    _, ck = saved
    edit_config(ck, lambda c: c["layers"][1].__setitem__("alpha", alpha), signed=signed)  # not the first layer loaded
    _refused(ck, "alpha|is not a JSON number" if signed else "alpha|is not a JSON number|config_sha256")


@pytest.mark.parametrize("edit", [
    lambda layer: layer.__setitem__("alpha", layer["alpha"] + 1),
    lambda layer: layer.__setitem__("use_rslora", not layer["use_rslora"]),
    lambda layer: layer.__setitem__("scaling", layer["scaling"] * 2),
])
def test_edits_that_change_the_function_are_refused(saved, edit):
    _, ck = saved
    edit_config(ck, lambda c: edit(c["layers"][1]), signed=False)
    _refused(ck, "does not match its config_sha256")  # the checksum catches any edit
    edit_config(ck, lambda c: None)  # re-signed: the stored scaling still disagrees
    _refused(ck, "scaling must be")


def test_a_format_1_config_is_checked_against_its_stored_scaling(tmp_path):
    """Format 1 has no config checksum: an edit that keeps alpha and scaling consistent cannot be
    seen there, one that does not is refused. (The format-1 checkpoint written at a3f73d9.)"""
    ck = tmp_path / "ck"
    shutil.copytree(FIXTURES / "format_v1" / "checkpoint", ck)
    edit_config(ck, lambda c: c["layers"][1].__setitem__("alpha", 4.0))
    _refused(ck, "scaling must be")


def test_a_format_2_checkpoint_rewritten_as_format_1_with_a_later_stream_is_refused(saved):
    # Format 1 was only written with stream 1 and has no checksum: taking it would let any
    # checkpoint drop its checksum, and then an edit of alpha and scaling together loads.
    _, ck = saved

    def as_format_1(config):
        config.update(format_version=1)
        del config["config_sha256"]
        for layer in config["layers"]:
            del layer["stream_version"]
        assert config["generator"]["stream_version"] == 2

    edit_config(ck, as_format_1)
    _refused(ck, "generator stream_version 2 in a format_version 1 config: format 1 holds stream version 1 only")


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.__setitem__("generator", None), "generator must be a JSON object, got null"),
    (lambda c: c.__setitem__("generator", []), "generator must be a JSON object, got an array"),
    (lambda c: c["generator"].__setitem__("stream_version", True), "generator"),
    (lambda c: c["generator"].__setitem__("rounds", 10.0), "generator"),
    (lambda c: c.__setitem__("tensors", None), "tensors must be a JSON object, got null"),
    (lambda c: c.__setitem__("tensors", [1, 2]), "tensors must be a JSON object, got an array"),
    (lambda c: c["tensors"].__setitem__("file", "../other.safetensors"), "tensors must be"),
    (lambda c: c.__setitem__("layers", {}), "lists no layers"),
    (lambda c: c["layers"].__setitem__(0, "0"), r"layers\[0\] must be a JSON object"),
    (lambda c: c["layers"][0].__setitem__("extra", 1), r"unknown \['extra'\]"),
    (lambda c: c["layers"][0].pop("scaling"), r"missing \['scaling'\]"),
    (lambda c: c["layers"][0].__setitem__("seed", " 12"), "seed must be an unsigned 64-bit"),
    (lambda c: c["layers"][0].__setitem__("seed", "+5"), "seed must be an unsigned 64-bit"),
    (lambda c: c["layers"][0].__setitem__("seed", str(2**64)), "seed"),
    (lambda c: c["layers"][0].__setitem__("rank", True), "rank must be an integer"),
    (lambda c: c["layers"][0].__setitem__("in_features", 8.0), "in_features must be a positive integer"),
    (lambda c: c["layers"][0].__setitem__("init", "xavier"), "init must be one of"),
    (lambda c: c["layers"][0].__setitem__("fingerprint", "XYZ"), "fingerprint must be 16"),
    (lambda c: c["layers"].append(dict(c["layers"][0])), "a name twice"),
    (lambda c: c.__setitem__("trainable", None), "trainable must be a list"),
    (lambda c: c.__setitem__("aliases", []), "aliases must map"),
    (lambda c: c.__setitem__("aliases", {"0.lora_A": "4.weight"}), "alias '0.lora_A' shadows a tensor"),
    (lambda c: c.__setitem__("aliases", {"x": "nothing"}), "not stored"),
    (lambda c: c.__setitem__("format_version", True), "format_version"),
    (lambda c: c.__setitem__("comment", "hi"), r"unknown \['comment'\]"),
    (lambda c: c.pop("config_sha256"), r"missing \['config_sha256'\]"),
])
def test_configs_that_break_the_schema_are_refused(saved, edit, match):
    _, ck = saved
    edit_config(ck, edit)
    _refused(ck, match)


@pytest.mark.parametrize("text,match", [
    ("[" * 200_000 + "]" * 200_000, "nests too deeply|not valid JSON"),
    ('{"a": ' + "[" * 900 + "]" * 900 + "}", "nests deeper than 16 levels"),
    ('{"format": "lottalora-seed-only", "format": "x"}', "duplicate key 'format'"),
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('{"a": 1e999}', "out of float64's range"),
    ("\xff\xfe", "not valid JSON"),
])
def test_malformed_json_is_refused(saved, text, match):
    _, ck = saved
    (ck / CONFIG_NAME).write_bytes(text.encode("latin-1"))
    _refused(ck, match)


def test_an_oversized_config_is_refused_before_it_is_parsed(saved, monkeypatch):
    _, ck = saved
    monkeypatch.setattr(checkpoint_files, "MAX_CONFIG_BYTES", 1000)
    _refused(ck, "larger than 1000 bytes")


@pytest.mark.parametrize("meta", [False, True])
def test_a_non_float_tensor_is_refused_before_anything_is_assigned(saved, meta):
    _, ck = saved
    edit_tensors(ck, lambda t: t.__setitem__("2.lora_A", t["2.lora_A"].to(torch.int32)))
    if meta:
        with torch.device("meta"):
            model = compat_model()
    else:
        model = None
    _refused(ck, "tensor '2.lora_A' has dtype torch.int32, the model's is torch.float32", model)


def test_a_meta_built_model_keeps_its_dtype(tmp_path):
    src = trained_small_model().to(torch.bfloat16)
    lottalora.save(src, tmp_path / "ck")
    with torch.device("meta"):
        model = compat_model()
    lottalora.load(model, tmp_path / "ck")
    for name, t in model.state_dict().items():
        want = src.state_dict()[name]
        if t.is_floating_point():
            assert t.dtype == torch.float32 and t.device.type == "cpu" and torch.equal(t, want.float()), name
    assert all(p.requires_grad for p in model.parameters())


class _WithRotaryBuffer(torch.nn.Module):
    """compat_model plus a non-persistent buffer, as a rotary embedding's frequencies."""

    def __init__(self):
        super().__init__()
        self.body = compat_model()
        self.register_buffer("freq", torch.arange(4.0), persistent=False)

    def forward(self, x):
        return self.body(x) * self.freq

    def reset_parameters(self):  # what materialize calls for the root's own buffer
        with torch.no_grad():
            self.freq.copy_(torch.arange(4.0))


def test_a_meta_model_with_buffers_no_checkpoint_holds_is_refused(tmp_path):
    src = _WithRotaryBuffer()
    lottalora.save(src, tmp_path / "ck")
    with torch.device("meta"):
        model = _WithRotaryBuffer()
    _refused(tmp_path / "ck", r"on the meta device that no checkpoint holds \(\['freq'\]\).*materialize", model)
    lottalora.materialize(model, "cpu")
    lottalora.load(model, tmp_path / "ck")
    x = torch.randn(2, 8)
    assert torch.equal(model(x), src(x))


def test_the_bytes_hashed_are_the_bytes_parsed(saved, monkeypatch):
    """The tensor file is swapped for a tampered one (same size) right after its SHA-256 is
    taken: what loads must be what was hashed (or nothing)."""
    model, ck = saved
    path = ck / TENSORS_NAME
    good = path.read_bytes()
    recorded = hashlib.sha256(good).hexdigest()
    tampered = bytearray(good)
    tampered[-3] ^= 0xFF
    real_sha256 = hashlib.sha256

    class SwapAfterHashing:
        def __init__(self, data=b""):
            self._h = real_sha256(data)

        def update(self, data):
            self._h.update(data)

        def hexdigest(self):
            digest = self._h.hexdigest()
            if digest == recorded:
                path.write_bytes(bytes(tampered))
            return digest

    class HashlibProxy:
        sha256 = SwapAfterHashing

    monkeypatch.setattr(checkpoint_files, "hashlib", HashlibProxy)
    fresh = trained_small_model(seed=1)
    lottalora.load(fresh, ck)
    assert path.read_bytes() == bytes(tampered)  # the swap did happen
    assert_same_model(fresh, model)


def test_fingerprints_hash_little_endian_float32_bytes():
    spec = lottalora.BackboneSpec(3, 4, 70, 5, init="gaussian")
    w = lottalora.backbone_block(spec)
    rows = [*w[:2, :64].flatten().tolist(), *w[3:, :64].flatten().tolist()]
    want = hashlib.sha256(struct.pack(f"<{len(rows)}f", *rows)).hexdigest()[:16]
    assert lottalora.backbone.backbone_fingerprint(spec) == want == "db0a7e4d98753a46"


def test_a_malformed_tensor_file_with_a_matching_checksum_is_refused(saved):
    _, ck = saved
    data = bytearray((ck / TENSORS_NAME).read_bytes())
    data[8:12] = b"{{{{"  # the safetensors header is JSON after an 8-byte length
    (ck / TENSORS_NAME).write_bytes(bytes(data))
    record_tensor_file(ck)
    _refused(ck, "not a valid safetensors file")


def test_a_model_whose_alpha_cannot_be_saved_is_refused(tmp_path):
    model = trained_small_model()
    model[0].alpha = float("nan")
    with pytest.raises(ValueError, match="layer '0': alpha must be"):
        lottalora.save(model, tmp_path / "ck")


def test_info_refuses_a_malformed_tensor_file_without_a_traceback(saved, capsys):
    from lottalora.cli import main

    _, ck = saved
    (ck / TENSORS_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    record_tensor_file(ck)
    assert main(["info", str(ck)]) == 2
    assert "not a valid safetensors file" in capsys.readouterr().err


@pytest.mark.parametrize("beta, match", [
    (torch.zeros(0), r"tensor '0\.beta' has shape \(0,\), the config has \(1,\)"),
    (torch.ones(1, dtype=torch.int64), r"tensor '0\.beta' has dtype torch\.int64: a floating-point tensor"),
])
def test_info_refuses_a_beta_that_is_not_one_floating_value(saved, capsys, beta, match):
    # describe reads each beta's value with no model to check it against: the shapes the config
    # implies stand in for the model's (the checksums are recomputed, so only the content refuses).
    from lottalora.cli import main

    _, ck = saved
    edit_tensors(ck, lambda t: t.__setitem__("0.beta", beta))
    assert main(["info", str(ck)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint ") and len(err.splitlines()) == 1
    assert re.search(match, err)


def test_info_escapes_control_characters_in_names(tmp_path, capsys):
    from lottalora.cli import main

    model = torch.nn.Sequential()
    model.add_module("\x1b[31mred\nfake | row", lottalora.Linear(4, 3, rank=1))
    lottalora.save(model, tmp_path / "ck")
    assert main(["info", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31mred\\nfake \\| row" in out
    edit_config(tmp_path / "ck", lambda c: c["layers"][0].__setitem__("rank", -1))
    assert main(["info", str(tmp_path / "ck")]) == 2
    assert "\x1b" not in capsys.readouterr().err


def test_info_escapes_the_directory_in_errors(tmp_path, capsys):
    from lottalora.cli import main

    assert main(["info", str(tmp_path / "a\x1b[2Jb")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "a\\x1b[2Jb" in err


@pytest.mark.parametrize("name", [CONFIG_NAME, TENSORS_NAME])
@pytest.mark.parametrize("kind, make", [
    ("a directory", lambda path: path.mkdir()),
    ("a FIFO", lambda path: os.mkfifo(path)),
    (r"a symbolic link that leads to no file \(dangling, or a loop\)", lambda path: path.symlink_to(path)),
])
def test_a_checkpoint_file_that_is_not_a_regular_file_is_named_as_such(saved, name, kind, make):
    # "missing file" sent people looking for a file that is there.
    _, ck = saved
    (ck / name).unlink()
    make(ck / name)
    _refused(ck, f"{re.escape(name)} exists but is {kind}, not a regular file")
    with pytest.raises(ValueError, match="not a regular file"):
        lottalora.summary(ck)


@pytest.mark.parametrize("rank", [10**400, 2**31])
@pytest.mark.parametrize("named", [False, True])
def test_a_rank_beyond_int32_is_refused_by_name_in_load_summary_and_info(tmp_path, capsys, rank, named):
    # The scaling computed from a rank of 10**400 overflowed a float (OverflowError, and a
    # traceback from `lottalora info`).
    from lottalora.cli import main

    model = trained_small_model()
    if named:
        lottalora.add_adapter(model, "extra", rank=1, target_modules=["0"])
    lottalora.save(model, tmp_path / "ck")
    ck = tmp_path / "ck"
    entry = (lambda c: c["layers"][0]["adapters"]["extra"]) if named else (lambda c: c["layers"][0])
    edit_config(ck, lambda c: entry(c).__setitem__("rank", rank))
    match = rf"rank must be an integer in \[{int(named)}, 2147483647\]"
    _refused(ck, match)
    with pytest.raises(ValueError, match=match):
        lottalora.summary(ck)
    assert main(["info", str(ck)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint ") and len(err.splitlines()) == 1 and re.search(match, err)
