"""Seed-only checkpoints: a model saved as seeds + adapters, never its backbone weights.

A checkpoint directory holds two files (format: docs/checkpoint.md):
- ``lottalora_config.json``: format version, the generator (stream version, Philox rounds), one
  entry per seeded layer (qualified name, shape, seed, stream, init, rank, alpha, scaling and a
  backbone fingerprint), the SHA-256 and size of the tensor file, and (from format version 2)
  the SHA-256 of the config itself;
- ``adapters.safetensors``: every tensor of the model's state_dict (adapters, beta, biases,
  embeddings, norms, heads); seeded backbones are not tensors of the state_dict, so they are
  never written.

``load`` validates everything before it changes the model: a missing, oversized, truncated or
tampered file, a config that breaks the schema or whose checksum does not match, an unknown
format or stream version, a layer or tensor (name, shape, dtype) that does not match the model,
or a generator whose fingerprint differs each raise ValueError, and nothing is loaded partially.
Nothing is unpickled: the config is JSON and the tensors are safetensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from lottalora_kernels import stream_spec as spec

from .distributed.state import barrier, gather_full, is_dtensor, shard_like
from .linear import Linear, check_alpha, extra_state, lora_scaling, upgrade_legacy_beta
from .stream import BackboneSpec, backbone_block
from .wrappers import plain_name, unwrap_model

CONFIG_NAME = "lottalora_config.json"
TENSORS_NAME = "adapters.safetensors"
# Written beside them for a transformers model: its architecture and the convert calls, from
# which lottalora.from_pretrained rebuilds it (lottalora/pretrained.py).
MODEL_CONFIG_NAME = "config.json"
# The tensor file's metadata "contents" when save(trainable_only=True) wrote it.
TRAINABLE_ONLY = "trainable"
FORMAT_NAME = "lottalora-seed-only"
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
# A config lists a few hundred bytes per seeded layer: 16 MiB is tens of thousands of layers,
# and keeps a hostile file from being read into memory whole.
MAX_CONFIG_BYTES = 16 * 2**20
# A config nests 3 deep (config, layers, a layer); anything much deeper is refused before any
# recursive code (checksum, messages) walks it.
MAX_CONFIG_NESTING = 16
_FINGERPRINT_ROWS = 2
_FINGERPRINT_COLS = 64

_TOP_KEYS = {
    1: {"format", "format_version", "generator", "layers", "trainable", "aliases", "tensors"},
    2: {"format", "format_version", "generator", "layers", "trainable", "aliases", "tensors", "config_sha256"},
}
_GENERATOR_KEYS = {"name", "rounds", "stream_version"}
_TENSORS_KEYS = {"file", "sha256", "bytes"}
_LAYER_KEYS_V1 = {"name", "in_features", "out_features", "seed", "stream", "init", "rank", "alpha", "use_rslora",
                  "scaling", "bias", "fingerprint"}
# Format 1 records the stream version once, in the generator (every layer was stream v1);
# format 2 records each layer's, and the generator's is the newest in use.
_LAYER_KEYS = {1: _LAYER_KEYS_V1, 2: _LAYER_KEYS_V1 | {"stream_version"}}
_U64_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def backbone_fingerprint(spec_: BackboneSpec) -> str:
    """SHA-256 (first 16 hex digits) of a few regenerated values: the first and last two rows'
    first 64 columns, as little-endian float32 bytes. A build whose generator differs gets
    another value."""
    rows = min(_FINGERPRINT_ROWS, spec_.out_features)
    cols = (0, min(_FINGERPRINT_COLS, spec_.in_features))
    first = backbone_block(spec_, rows=(0, rows), cols=cols)
    last = backbone_block(spec_, rows=(spec_.out_features - rows, spec_.out_features), cols=cols)
    return hashlib.sha256(_float32_le_bytes(first) + _float32_le_bytes(last)).hexdigest()[:16]


def _float32_le_bytes(t: torch.Tensor) -> bytes:
    """The values' float32 bytes in little-endian order, whatever the machine's byte order."""
    return t.detach().cpu().numpy().astype("<f4").tobytes()


def _canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def config_checksum(config: dict) -> str:
    """SHA-256 (hex) of the config without its "config_sha256" entry, as canonical JSON (keys
    sorted, no spaces, ASCII): it covers the config's content, not its formatting."""
    return hashlib.sha256(_canonical_json({k: v for k, v in config.items() if k != "config_sha256"})).hexdigest()


def terminal_safe(text: str) -> str:
    """``text`` with every non-printable character (ANSI escapes, newlines, ...) written as its
    Python escape, for printing names read from a file to a terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _seeded_layers(model: nn.Module) -> dict[str, Linear]:
    """{plain name: layer} for every lottalora.Linear of ``model``."""
    return {plain_name(name): m for name, m in model.named_modules() if isinstance(m, Linear)}


def _tensors_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """{plain name: state_dict tensor} for every tensor a checkpoint can hold (not the extra states)."""
    return {plain_name(k): v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def _trainable_names(model: nn.Module) -> list[str]:
    """Plain names of the parameters that require grad, tied names included."""
    return sorted({plain_name(n) for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad})


def _parameter_ids(model: nn.Module) -> dict[str, int]:
    """{plain name: id of the parameter or buffer}: tied weights share one object."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {plain_name(n): id(t) for n, t in named}


def _split_aliases(tensors: dict[str, torch.Tensor], ids: dict[str, int]) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, str]]:
    """Tensors stored once each, and {alias: stored name} for names that share a tensor (tied
    weights such as GPT-2's lm_head and token embedding). Sharded tensors (DTensors) are tied
    when they are one parameter object, which every rank decides alike; plain tensors when they
    share memory."""
    unique, aliases, seen = {}, {}, {}
    for name in sorted(tensors):
        t = tensors[name]
        if is_dtensor(t):
            key = ("parameter", ids[name]) if name in ids else None
        else:
            key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
        else:
            unique[name] = t
            if key is not None:
                seen[key] = name
    return unique, aliases


def _upgrade_betas(tensors: dict[str, torch.Tensor], layers: dict[str, Linear]) -> None:
    """Checkpoints written by lottalora 0.1 hold each beta 0-dim; layers hold it as (1,) now."""
    for name in layers:
        upgrade_legacy_beta(tensors, f"{name}.beta" if name else "beta")


def save(model: nn.Module, directory: str | os.PathLike, *, trainable_only: bool = False) -> Path:
    """Write ``model`` as seeds + tensors to ``directory`` (created if needed). Returns the path.

    The model must contain at least one ``lottalora.Linear``; every tensor of its state_dict is
    stored (the seeded backbones are not in it), so a model of the same architecture restores
    identical outputs with ``load``. Writes format version ``FORMAT_VERSION``.
    ``trainable_only=True`` stores only the parameters that require grad (adapters, betas,
    trained biases, ``trainable_modules``), as PEFT saves an adapter: ``load`` then restores
    those into a model that has the rest (the same base model, converted the same way).

    ``model`` may be wrapped by ``torch.compile`` or ``DistributedDataParallel``: the plain
    names are written. With FSDP2 (``fully_shard``) or tensor-parallel parameters (DTensors),
    every rank must call ``save`` (the shards are gathered, one tensor at a time); rank 0 writes
    and every rank returns once the files are complete. Transformers models also get a
    ``config.json`` from which ``lottalora.from_pretrained`` rebuilds them (``lottalora.pretrained``).
    Each file is replaced in one step, so a reader never sees half of one.
    """
    from safetensors.torch import save as serialize

    from .pretrained import model_config_for_save

    if not isinstance(trainable_only, bool):
        raise TypeError(f"trainable_only must be a bool, got {trainable_only!r}")
    model = unwrap_model(model)
    layers = _seeded_layers(model)
    if not layers:
        raise ValueError("model has no lottalora.Linear layer: convert it first (lottalora.convert)")
    for name, m in layers.items():
        try:
            check_alpha(m.alpha, zero_ok=m.rank == 0)
        except ValueError as exc:
            raise ValueError(f"layer {name!r}: {exc}") from None
    directory = Path(directory)
    trainable = _trainable_names(model)
    state = _tensors_to_save(model)
    if trainable_only:
        state = {k: v for k, v in state.items() if k in set(trainable)}
        if not state:
            raise ValueError("trainable_only=True but no parameter of the model requires grad: nothing to save")
    unique, aliases = _split_aliases(state, _parameter_ids(model))
    sharded = any(is_dtensor(t) for t in unique.values())
    if sharded:
        unique = gather_full(unique)  # a collective: every rank is here
        if unique is None:  # not the writer
            barrier()
            return directory
    metadata = {"format": FORMAT_NAME, **({"contents": TRAINABLE_ONLY} if trainable_only else {})}
    data = serialize({k: v.detach().contiguous().cpu() for k, v in unique.items()}, metadata=metadata)
    model_config = model_config_for_save(model)
    directory.mkdir(parents=True, exist_ok=True)
    with _replaced_atomically(directory / TENSORS_NAME) as tmp:
        tmp.write_bytes(data)
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        # The newest stream version in use: a reader that knows only older versions refuses the file.
        "generator": {"name": "philox4x32", "rounds": spec.PHILOX_ROUNDS,
                      "stream_version": max(m.stream_version for m in layers.values())},
        "layers": [
            {"name": name, "in_features": m.in_features, "out_features": m.out_features, "seed": str(m.seed),
             "stream": str(m.stream), "stream_version": m.stream_version, "init": m.init, "rank": m.rank,
             "alpha": m.alpha,
             "use_rslora": m.use_rslora, "scaling": m.scaling, "bias": m.bias is not None,
             "fingerprint": backbone_fingerprint(m.spec)}
            for name, m in layers.items()
        ],
        "trainable": trainable,
        "aliases": aliases,
        "tensors": {"file": TENSORS_NAME, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
    }
    config["config_sha256"] = config_checksum(config)
    config_path = directory / CONFIG_NAME
    with _replaced_atomically(config_path) as tmp:
        tmp.write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")
    # The tensors get the config's permissions (the umask's).
    os.chmod(directory / TENSORS_NAME, stat.S_IMODE(config_path.stat().st_mode))
    if model_config is not None:
        with _replaced_atomically(directory / MODEL_CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(model_config, indent=2) + "\n")
    if sharded:
        barrier()
    return directory


@contextlib.contextmanager
def _replaced_atomically(path: Path):
    """Yield a temporary path beside ``path``; once written, it replaces ``path`` in one step, so
    a reader (or another rank saving the same model) never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fail(directory: Path, message: str):
    raise ValueError(f"checkpoint {directory}: {message}")


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _short(value, limit: int = 120) -> str:
    """repr(value), cut to ``limit`` characters: values in messages come from the file."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...(cut)"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_json(directory: Path, raw: bytes):
    def unique_keys(pairs):  # json keeps the last of repeated keys without a word
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise ValueError(f"duplicate key {_short(key)}")
            obj[key] = value
        return obj

    def no_constant(name):
        raise ValueError(f"{name} is not a JSON number")

    def finite_float(text):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:40]} is out of float64's range")
        return value

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys, parse_constant=no_constant,
                          parse_float=finite_float)
    except RecursionError:
        _fail(directory, f"{CONFIG_NAME} nests too deeply to be a {FORMAT_NAME} config")
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        _fail(directory, f"{CONFIG_NAME} is not valid JSON ({exc})")


def _nesting(value) -> int:
    """How deep lists and objects nest in a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_keys(directory: Path, what: str, value, keys: set[str]) -> None:
    if not isinstance(value, dict):
        _fail(directory, f"{what} must be a JSON object, got {_json_type(value)}")
    missing, unknown = sorted(keys - set(value)), sorted(set(value) - keys)
    if missing or unknown:
        _fail(directory, f"{what} must have the keys {sorted(keys)}: missing {missing}, unknown {_short(unknown)}")


def _check_generator(directory: Path, generator) -> None:
    _check_keys(directory, "generator", generator, _GENERATOR_KEYS)
    version = generator["stream_version"]
    if generator["name"] != "philox4x32" or not _is_int(generator["rounds"]) or \
            generator["rounds"] != spec.PHILOX_ROUNDS or not _is_int(version) or \
            version not in spec.SUPPORTED_STREAM_VERSIONS:
        _fail(directory, f"generator {_short(generator)} is not supported by this build "
                         f"(stream versions {spec.SUPPORTED_STREAM_VERSIONS}, philox4x32-{spec.PHILOX_ROUNDS})")


def _check_layer(directory: Path, index: int, layer, format_version: int, generator: dict) -> BackboneSpec:
    """The layer entry's BackboneSpec, after checking every field and the stored scaling."""
    _check_keys(directory, f"layers[{index}]", layer, _LAYER_KEYS[format_version])
    where = f"layers[{index}] ({_short(layer['name'])})" if isinstance(layer["name"], str) else f"layers[{index}]"

    def bad(key: str, expected: str):
        _fail(directory, f"{where}: {key} must be {expected}, got {_short(layer[key])}")

    if not isinstance(layer["name"], str):
        bad("name", "a string")
    for key in ("in_features", "out_features"):
        if not _is_int(layer[key]) or layer[key] <= 0:
            bad(key, "a positive integer")
    for key in ("seed", "stream"):
        if not isinstance(layer[key], str) or not _U64_DECIMAL.fullmatch(layer[key]):
            bad(key, "an unsigned 64-bit integer in decimal digits, as a string")
    if not _is_int(layer["rank"]) or layer["rank"] < 0:
        bad("rank", "an integer >= 0")
    for key in ("use_rslora", "bias"):
        if not isinstance(layer[key], bool):
            bad(key, "true or false")
    try:
        alpha = check_alpha(layer["alpha"], zero_ok=layer["rank"] == 0)
    except ValueError as exc:
        _fail(directory, f"{where}: {exc}")
    scaling = lora_scaling(layer["rank"], alpha, layer["use_rslora"])
    if isinstance(layer["scaling"], bool) or not isinstance(layer["scaling"], (int, float)) or \
            layer["scaling"] != scaling:
        bad("scaling", f"{scaling!r}, what rank {layer['rank']}, alpha {alpha!r} and "
                       f"use_rslora {layer['use_rslora']} give")
    if not isinstance(layer["fingerprint"], str) or not _HEX16.fullmatch(layer["fingerprint"]):
        bad("fingerprint", "16 lowercase hex digits")
    stream_version = layer["stream_version"] if format_version >= 2 else generator["stream_version"]
    if not _is_int(stream_version) or stream_version not in spec.SUPPORTED_STREAM_VERSIONS or \
            stream_version > generator["stream_version"]:
        bad("stream_version", f"one of {spec.SUPPORTED_STREAM_VERSIONS} and at most the generator's "
                              f"{generator['stream_version']}")
    try:
        return BackboneSpec(int(layer["seed"]), int(layer["stream"]), layer["in_features"], layer["out_features"],
                            layer["init"], stream_version)
    except (TypeError, ValueError) as exc:
        _fail(directory, f"{where}: {exc}")


def _check_config(directory: Path, config) -> None:
    """Schema and content of a parsed config; adds each layer's "spec" (a BackboneSpec)."""
    if _nesting(config) > MAX_CONFIG_NESTING:
        _fail(directory, f"{CONFIG_NAME} nests deeper than {MAX_CONFIG_NESTING} levels")
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        _fail(directory, f"{CONFIG_NAME} is not a {FORMAT_NAME} config")
    version = config.get("format_version")
    if not _is_int(version) or version not in READABLE_FORMAT_VERSIONS:
        _fail(directory, f"unknown format_version {_short(version)} (this build reads {READABLE_FORMAT_VERSIONS})")
    _check_keys(directory, CONFIG_NAME, config, _TOP_KEYS[version])
    if version >= 2 and config["config_sha256"] != config_checksum(config):
        _fail(directory, f"{CONFIG_NAME} does not match its config_sha256: edited or corrupted")
    _check_generator(directory, config["generator"])
    layers = config["layers"]
    if not isinstance(layers, list) or not layers:
        _fail(directory, "config lists no layers")
    specs = [_check_layer(directory, i, layer, version, config["generator"]) for i, layer in enumerate(layers)]
    repeated = sorted(name for name, count in Counter(layer["name"] for layer in layers).items() if count > 1)
    if repeated:
        _fail(directory, f"layers list a name twice: {_short(repeated)}")
    trainable, aliases = config["trainable"], config["aliases"]
    if not isinstance(trainable, list) or not all(isinstance(n, str) for n in trainable):
        _fail(directory, f"trainable must be a list of names, got {_json_type(trainable)}")
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        _fail(directory, f"aliases must map names to stored tensor names, got {_short(aliases)}")
    _check_keys(directory, "tensors", config["tensors"], _TENSORS_KEYS)
    tensors = config["tensors"]
    if tensors["file"] != TENSORS_NAME or not isinstance(tensors["sha256"], str) or \
            not _HEX64.fullmatch(tensors["sha256"]) or not _is_int(tensors["bytes"]) or tensors["bytes"] < 0:
        _fail(directory, f"tensors must be {{'file': {TENSORS_NAME!r}, 'sha256': 64 hex digits, 'bytes': an "
                         f"integer}}, got {_short(tensors)}")
    for layer, spec_ in zip(layers, specs, strict=True):
        layer["spec"] = spec_


def _read_checkpoint(directory: Path) -> tuple[dict, bytes]:
    """The validated config and the tensor file's bytes, checked against the config's size and
    SHA-256. Each file is read once: the bytes checked are the bytes parsed."""
    config_path, tensor_path = directory / CONFIG_NAME, directory / TENSORS_NAME
    for path in (config_path, tensor_path):
        if not path.is_file():
            _fail(directory, f"missing file {path.name}")
    with open(config_path, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        _fail(directory, f"{CONFIG_NAME} is larger than {MAX_CONFIG_BYTES} bytes")
    config = _parse_json(directory, raw)
    _check_config(directory, config)
    recorded = config["tensors"]["bytes"]
    size = tensor_path.stat().st_size
    if size != recorded:
        _fail(directory, f"{TENSORS_NAME} has {size} bytes, the config records {recorded}: truncated or replaced")
    with open(tensor_path, "rb") as f:
        data = f.read(recorded + 1)
    if len(data) != recorded:
        _fail(directory, f"{TENSORS_NAME} changed size while it was read")
    if hashlib.sha256(data).hexdigest() != config["tensors"]["sha256"]:
        _fail(directory, f"{TENSORS_NAME} does not match the SHA-256 in the config: corrupted or tampered")
    return config, data


def _parse_tensors(directory: Path, data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as deserialize

    try:
        return deserialize(data)
    except Exception as exc:  # a parser fed bytes from outside: any failure means a malformed file
        _fail(directory, f"{TENSORS_NAME} is not a valid safetensors file ({type(exc).__name__}: {exc})")


def _tensor_contents(directory: Path, data: bytes) -> str:
    """What the tensor file holds, from its safetensors metadata: "all" (every tensor of the
    state_dict) or TRAINABLE_ONLY. The header is an 8-byte little-endian length and a JSON object."""
    try:
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + length].decode("utf-8")) if 8 <= 8 + length <= len(data) else None
    except (ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        _fail(directory, f"{TENSORS_NAME} is not a valid safetensors file (no JSON header)")
    metadata = header.get("__metadata__") or {}
    contents = metadata.get("contents", "all") if isinstance(metadata, dict) else None
    if contents not in ("all", TRAINABLE_ONLY):
        _fail(directory, f"{TENSORS_NAME} says it holds {_short(contents)} tensors (this build reads 'all' and "
                         f"{TRAINABLE_ONLY!r})")
    return contents


def read_config(directory: str | os.PathLike) -> dict:
    """The validated JSON config of a checkpoint directory (the tensor file's checksum included)."""
    return _read_checkpoint(Path(directory))[0]


def _check_layers_match(directory: Path, config: dict, layers: dict[str, Linear]) -> None:
    names = [layer["name"] for layer in config["layers"]]
    unknown = sorted(set(names) - set(layers))
    if unknown:
        _fail(directory, f"layers {unknown} are not lottalora.Linear layers of this model")
    missing = sorted(set(layers) - set(names))
    if missing:
        _fail(directory, f"the model's seeded layers {missing} are not in the checkpoint")
    for layer in config["layers"]:
        module, s = layers[layer["name"]], layer["spec"]
        if (module.in_features, module.out_features, module.rank, module.bias is not None) != \
                (s.in_features, s.out_features, layer["rank"], layer["bias"]):
            _fail(directory, f"layer {layer['name']!r} is {module.out_features}x{module.in_features} rank "
                             f"{module.rank} bias {module.bias is not None} in the model but "
                             f"{s.out_features}x{s.in_features} rank {layer['rank']} bias {layer['bias']} in the "
                             "checkpoint")
        if backbone_fingerprint(s) != layer["fingerprint"]:
            _fail(directory, f"layer {layer['name']!r}: the backbone fingerprint differs: this build's "
                             "generator does not reproduce the weights the checkpoint was trained with")


def _resolve_aliases(directory: Path, tensors: dict[str, torch.Tensor], aliases: dict[str, str]) -> None:
    for alias, stored in aliases.items():
        if alias in tensors:
            _fail(directory, f"alias {_short(alias)} shadows a tensor stored under that name in {TENSORS_NAME}")
        if stored not in tensors:
            _fail(directory, f"alias {_short(alias)} names {_short(stored)}, which is not stored in {TENSORS_NAME}")
    for alias, stored in aliases.items():
        tensors[alias] = tensors[stored]


def _check_tensors_match(directory: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                         every: bool = True):
    """``every``: the checkpoint must hold every tensor of the model (else a subset of them)."""
    missing = sorted(set(expected) - set(tensors)) if every else []
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        _fail(directory, f"tensors differ from the model's: missing {missing[:5]}, "
                         f"unexpected {_short(unexpected[:5])}")
    for key, value in tensors.items():
        want = expected[key]
        if value.shape != want.shape:
            _fail(directory, f"tensor {_short(key)} has shape {tuple(value.shape)}, the model has {tuple(want.shape)}")
        # Floating values are converted to the model's floating dtype (as load_state_dict
        # does); anything else (an integer weight, a float into an integer buffer) is refused.
        if want.is_floating_point():
            same_kind = value.is_floating_point()
        else:
            same_kind = value.dtype == want.dtype
        if not same_kind:
            _fail(directory, f"tensor {_short(key)} has dtype {value.dtype}, the model's is {want.dtype}: "
                             + ("a floating-point tensor is expected" if want.is_floating_point()
                                else "the same dtype is expected"))


def _check_nothing_left_on_meta(directory: Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Non-persistent buffers (rotary frequencies, masks) are not in a state_dict: a meta-built
    model would keep them on meta, and its forward would fail far from here."""
    left = [name for name, t in [*model.named_parameters(remove_duplicate=False),
                                 *model.named_buffers(remove_duplicate=False)]
            if t.device.type == "meta" and plain_name(name) not in tensors]
    if left:
        _fail(directory, f"the model has tensors on the meta device that no checkpoint holds ({left[:3]}): "
                         "call lottalora.materialize(model, device) before lottalora.load")


def load(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Restore a checkpoint written by ``save`` into ``model`` (same architecture, converted).

    Reads format versions ``READABLE_FORMAT_VERSIONS``. Everything is checked first (see the
    module docstring); then seeds, streams, inits, alpha and use_rslora are set from the config
    and every tensor is loaded, converted to the dtype of the model's tensor (floating-point
    values only, into floating-point tensors). Parameters on the meta device are replaced by
    CPU tensors; a model with other tensors left on meta (non-persistent buffers) is refused:
    ``lottalora.materialize`` it first. A checkpoint saved with ``trainable_only=True`` loads
    its tensors and leaves the model's others as they are. ``model`` may be compiled,
    DDP-wrapped, or sharded with FSDP2 or tensor parallel (every rank reads the files and keeps
    its own shards; no collective). Returns ``model``.
    """
    directory = Path(directory)
    config, data = _read_checkpoint(directory)
    return load_read(model, directory, config, data)


def load_read(model: nn.Module, directory: Path, config: dict, data: bytes) -> nn.Module:
    """``load`` with the checkpoint already read by ``_read_checkpoint`` (config and tensor bytes,
    validated): callers that also need the config read the files once."""
    model = unwrap_model(model)
    layers = _seeded_layers(model)
    _check_layers_match(directory, config, layers)
    tensors = _parse_tensors(directory, data)
    every = _tensor_contents(directory, data) == "all"
    del data
    _resolve_aliases(directory, tensors, config["aliases"])
    _upgrade_betas(tensors, layers)
    expected = _tensors_to_save(model)
    _check_tensors_match(directory, tensors, expected, every)
    _check_nothing_left_on_meta(directory, model, tensors)

    on_meta = any(t.device.type == "meta" for t in list(model.parameters()) + list(model.buffers()))
    for key, value in tensors.items():
        want = expected[key]
        if is_dtensor(want):  # every rank keeps its own shard of the whole tensor read
            tensors[key] = shard_like(value, want)
        elif on_meta:
            # assign=True adopts the given tensors as they are: give them the model's dtype (and
            # device, CPU for what is on meta) first. The copying load converts on its own.
            tensors[key] = value.to(device="cpu" if want.device.type == "meta" else want.device, dtype=want.dtype)
    for layer in config["layers"]:
        tensors[f"{layer['name']}._extra_state" if layer["name"] else "_extra_state"] = extra_state(
            layer["spec"], layer["rank"], float(layer["alpha"]), layer["use_rslora"])
    model_names = {plain_name(k): k for k in model.state_dict()}
    tensors = {model_names[k]: v for k, v in tensors.items()}
    if on_meta:
        model.load_state_dict(tensors, strict=every, assign=True)
        if config["aliases"] and hasattr(model, "tie_weights"):
            model.tie_weights()  # assign=True gives each name its own Parameter; tie them again
    else:
        model.load_state_dict(tensors, strict=every)
    return model


def describe(directory: str | os.PathLike) -> str:
    """What a checkpoint holds: its layers, the bytes stored, and the same model with stored fp16
    weights (its backbones plus every stored tensor at 2 bytes a value, adapters excluded).
    Names read from the files are printed with non-printable characters escaped."""
    directory = Path(directory)
    config, data = _read_checkpoint(directory)
    shapes = {k: tuple(t.shape) for k, t in _parse_tensors(directory, data).items()}
    adapter_keys = {k for k in shapes if k.endswith((".lora_A", ".lora_B", ".beta"))}
    adapter_values = sum(math.prod(shapes[k]) for k in adapter_keys)
    other_values = sum(math.prod(s) for k, s in shapes.items() if k not in adapter_keys)
    backbone_values = sum(l["in_features"] * l["out_features"] for l in config["layers"])
    stored = (directory / CONFIG_NAME).stat().st_size + len(data)
    dense_fp16 = 2 * (backbone_values + other_values)
    lines = [f"{terminal_safe(str(directory))}: {FORMAT_NAME} v{config['format_version']}, generator "
             f"philox4x32-{config['generator']['rounds']}",
             "", "| layer | shape (out x in) | rank | init | stream version | seed | stream |",
             "|---|---|---|---|---|---|---|"]
    for l in config["layers"]:
        name = terminal_safe(l["name"]).replace("|", "\\|")
        lines.append(f"| {name} | {l['out_features']} x {l['in_features']} | {l['rank']} | {l['init']} | "
                     f"{l['spec'].version} | {l['seed']} | {l['stream']} |")
    lines += ["", f"seeded layers: {len(config['layers'])}, backbone values regenerated (never stored): "
                  f"{backbone_values:,}",
              f"stored tensors: {len(shapes)} ({adapter_values:,} adapter/beta values, {other_values:,} other values)",
              f"bytes stored: {stored:,} ({stored / 2**20:.2f} MiB)",
              f"same model with stored fp16 weights: {dense_fp16:,} bytes ({dense_fp16 / 2**20:.2f} MiB), "
              f"{dense_fp16 / stored:.1f}x the checkpoint"]
    return "\n".join(lines)
