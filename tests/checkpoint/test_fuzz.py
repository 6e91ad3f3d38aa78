"""Property-based fuzzing of lottalora.load and Linear.load_state_dict (hypothesis).

Saved checkpoints and state dicts are mutated (config values, config bytes, tensor-file bytes,
extra-state words), sometimes with every checksum recomputed as someone who knows the format
would. Whatever the mutation, a load either raises ValueError and leaves the model's state as it
was, or succeeds and gives what the file describes: the source model for a checkpoint (a
checksummed config cannot be changed consistently by one edit), the mutated state for a state
dict. No other exception may escape.

Bounded for CI: LOTTALORA_FUZZ_EXAMPLES (default 800) examples per test: 20 s of CPU, 21 to 43 s of wall time
for the file on a shared 2-core CPU (measured 2026-11-24); --hypothesis-show-statistics shows what was refused.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch

import lottalora
from lottalora.checkpoint.format import CONFIG_NAME, TENSORS_NAME
from tests.support.checkpoints import assert_unchanged, record_tensor_file, sign, snapshot, trained_small_model

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("LOTTALORA_FUZZ_EXAMPLES", "800")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SOURCE = trained_small_model(seed=0)
_TEMPLATE = Path(tempfile.mkdtemp(prefix="lottalora-fuzz-"))
atexit.register(shutil.rmtree, _TEMPLATE, ignore_errors=True)
lottalora.save(SOURCE, _TEMPLATE)
CONFIG = json.loads((_TEMPLATE / CONFIG_NAME).read_text())
TENSOR_BYTES = (_TEMPLATE / TENSORS_NAME).read_bytes()
HEADER_END = 8 + struct.unpack("<Q", TENSOR_BYTES[:8])[0]
X = torch.linspace(-2, 2, 24).reshape(3, 8)


def _linears(model):
    return [m for m in model.modules() if isinstance(m, lottalora.Linear)]


def _assert_same_function(model, want) -> None:
    """Equal tensors, backbones and scalings, and equal outputs. (alpha and use_rslora may differ
    where they scale nothing: a rank-0 layer.)"""
    got_sd, want_sd = model.state_dict(), want.state_dict()
    assert got_sd.keys() == want_sd.keys()
    for k, v in want_sd.items():
        if not k.endswith("_extra_state"):
            assert got_sd[k].dtype == v.dtype and torch.equal(got_sd[k], v), k
    for got, ref in zip(_linears(model), _linears(want), strict=True):
        assert (got.spec, got.scaling) == (ref.spec, ref.scaling)
    with torch.no_grad():
        assert torch.equal(model(X), want(X))


def _load_checks_out(ck: Path) -> None:
    model = trained_small_model(seed=1)
    before = snapshot(model)
    try:
        lottalora.load(model, ck)
    except ValueError as exc:
        event(f"refused: {' '.join(str(exc).split(': ', 1)[1].split()[:4])}")  # --hypothesis-show-statistics
        assert_unchanged(model, before)
        return
    event("loaded")
    _assert_same_function(model, SOURCE)


def _fresh_copy() -> Path:
    ck = Path(tempfile.mkdtemp(prefix="lottalora-fuzz-case-"))
    shutil.copyfile(_TEMPLATE / CONFIG_NAME, ck / CONFIG_NAME)
    shutil.copyfile(_TEMPLATE / TENSORS_NAME, ck / TENSORS_NAME)
    return ck


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _get(obj, path):
    for key in path:
        obj = obj[key]
    return obj


_SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
            | st.sampled_from([0, -1, 1, 2, 2**32, 2**64 - 1, 2**64, 1e308, 5e-324, "", "0", "gaussian",
                               "uniform", "rademacher", "philox4x32", "adapters.safetensors", "0.lora_A"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=5)


def _near(value):
    """Values a plausible edit would put in place of ``value``."""
    if isinstance(value, bool):
        return st.just(not value)
    if isinstance(value, int):
        return st.sampled_from([value + 1, value - 1, -value, 2 * value, float(value), str(value)])
    if isinstance(value, float):
        return st.sampled_from([value + 1, 2 * value, -value, value + 1e-9, int(value), str(value)])
    if isinstance(value, str):
        return st.sampled_from([value + "0", value[:-1], value.upper(), " " + value, value + "\x1b[31m"])
    return _VALUES


@st.composite
def config_edits(draw):
    config = json.loads(json.dumps(CONFIG))
    path = draw(st.sampled_from(list(_paths(config))))
    target = _get(config, path)
    ops = ["insert"] if isinstance(target, (dict, list)) else []
    ops += ["replace", "delete"] if path else []
    op = draw(st.sampled_from(ops))
    if op == "insert":
        value = draw(_VALUES)
        if isinstance(target, dict):
            target[draw(st.text(max_size=8) | st.sampled_from(sorted(CONFIG["layers"][0])))] = value
        else:
            target.insert(draw(st.integers(0, len(target))), value if draw(st.booleans()) or not target
                          else json.loads(json.dumps(target[0])))
    else:
        parent = _get(config, path[:-1])
        if op == "replace":
            parent[path[-1]] = draw(_near(target) | _VALUES)
        else:
            del parent[path[-1]]
    return config, draw(st.booleans())


@FUZZ
@given(config_edits())
def test_an_edited_config_is_refused_untouched_or_loads_the_same_model(edit):
    config, signed = edit
    ck = _fresh_copy()
    try:
        if signed:
            sign(config)
        (ck / CONFIG_NAME).write_text(json.dumps(config))
        _load_checks_out(ck)
    finally:
        shutil.rmtree(ck)


def _byte_edit(data: bytes, draw, low: int, high: int) -> bytes:
    """One byte flipped, replaced, inserted or deleted at a position in [low, high), or the file
    cut or extended there."""
    pos = draw(st.integers(low, max(low, high - 1)))
    op = draw(st.sampled_from(["flip", "replace", "insert", "delete", "cut", "extend"]))
    if op == "flip":
        return data[:pos] + bytes([data[pos] ^ (1 << draw(st.integers(0, 7)))]) + data[pos + 1:]
    if op == "replace":
        return data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1:]
    if op == "insert":
        return data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos:]
    if op == "delete":
        return data[:pos] + data[pos + 1:]
    if op == "cut":
        return data[:pos]
    return data + draw(st.binary(min_size=1, max_size=16))


@FUZZ
@given(st.data())
def test_damaged_config_bytes_are_refused_untouched_or_load_the_same_model(data):
    raw = (_TEMPLATE / CONFIG_NAME).read_bytes()
    ck = _fresh_copy()
    try:
        (ck / CONFIG_NAME).write_bytes(_byte_edit(raw, data.draw, 0, len(raw)))
        _load_checks_out(ck)
    finally:
        shutil.rmtree(ck)


@FUZZ
@given(st.data(), st.booleans())
def test_damaged_tensor_files_are_refused_untouched_or_load_the_same_model(data, recorded):
    """Unrecorded damage anywhere must fail the size or checksum check. Recorded damage (size,
    SHA-256 and config checksum updated) is kept to the safetensors header, where it must be
    refused or be harmless: a recorded change of the values themselves is a different valid file."""
    high = HEADER_END if recorded else len(TENSOR_BYTES)
    ck = _fresh_copy()
    try:
        (ck / TENSORS_NAME).write_bytes(_byte_edit(TENSOR_BYTES, data.draw, 0, high))
        if recorded:
            record_tensor_file(ck)
        _load_checks_out(ck)
    finally:
        shutil.rmtree(ck)


_STATE = SOURCE[2].state_dict()


@FUZZ
@given(st.integers(0, 11), st.integers(-2**63, 2**63 - 1) | st.sampled_from([0, 1, 2, 3, 4, 2**32 - 1, 2**32, -1]))
def test_a_mutated_extra_state_is_refused_untouched_or_round_trips(index, word):
    state = {k: v.clone() for k, v in _STATE.items()}
    state["_extra_state"][index] = word
    layer = lottalora.Linear(6, 5, rank=4, seed=1, stream=2, init="gaussian")
    before = snapshot(layer)
    try:
        layer.load_state_dict(state)
    except ValueError:
        event("refused")
        assert_unchanged(layer, before)
        return
    event("loaded")
    got = layer.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())  # what was given is what is held
