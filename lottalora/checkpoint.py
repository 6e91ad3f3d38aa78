"""Seed-only checkpoints: a model saved as seeds + adapters, never its backbone weights.

A checkpoint directory holds two files (format: docs/checkpoint.md):
- ``lottalora_config.json``: format version, the generator (stream version, Philox rounds), one
  entry per seeded layer (qualified name, shape, seed, stream, init, rank, alpha, scaling and a
  backbone fingerprint), and the SHA-256 and size of the tensor file;
- ``adapters.safetensors``: every tensor of the model's state_dict (adapters, beta, biases,
  embeddings, norms, heads); seeded backbones are not tensors of the state_dict, so they are
  never written.

``load`` validates everything before it changes the model: a missing, truncated or tampered
file, an unknown format or stream version, a layer or tensor that does not match the model, or
a generator whose fingerprint differs each raise ValueError, and nothing is loaded partially.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from lottalora_kernels import stream_spec as spec

from .linear import Linear, extra_state
from .stream import BackboneSpec, backbone_block

CONFIG_NAME = "lottalora_config.json"
TENSORS_NAME = "adapters.safetensors"
FORMAT_NAME = "lottalora-seed-only"
FORMAT_VERSION = 1
_FINGERPRINT_ROWS = 2
_FINGERPRINT_COLS = 64


def backbone_fingerprint(spec_: BackboneSpec) -> str:
    """SHA-256 (first 16 hex digits) of a few regenerated values: the first and last two rows'
    first 64 columns, as float32 bytes. A build whose generator differs gets another value."""
    rows = min(_FINGERPRINT_ROWS, spec_.out_features)
    cols = (0, min(_FINGERPRINT_COLS, spec_.in_features))
    first = backbone_block(spec_, rows=(0, rows), cols=cols)
    last = backbone_block(spec_, rows=(spec_.out_features - rows, spec_.out_features), cols=cols)
    return hashlib.sha256(first.numpy().tobytes() + last.numpy().tobytes()).hexdigest()[:16]


def _seeded_layers(model: nn.Module) -> dict[str, Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, Linear)}


def _tensors_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def _split_aliases(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors stored once each, and {alias: stored name} for names that share a tensor's memory
    (tied weights such as GPT-2's lm_head and token embedding)."""
    unique, aliases, seen = {}, {}, {}
    for name in sorted(tensors):
        t = tensors[name]
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
        else:
            unique[name] = t
            if key is not None:
                seen[key] = name
    return unique, aliases


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model`` as seeds + tensors to ``directory`` (created if needed). Returns the path.

    The model must contain at least one ``lottalora.Linear``; every tensor of its state_dict is
    stored (the seeded backbones are not in it), so a model of the same architecture restores
    identical outputs with ``load``.
    """
    from safetensors.torch import save_file

    layers = _seeded_layers(model)
    if not layers:
        raise ValueError("model has no lottalora.Linear layer: convert it first (lottalora.convert)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    unique, aliases = _split_aliases(_tensors_to_save(model))
    tensors = {k: v.detach().contiguous().cpu() for k, v in unique.items()}
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    tensor_path = directory / TENSORS_NAME
    save_file(tensors, str(tensor_path), metadata={"format": FORMAT_NAME})
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "generator": {"name": "philox4x32", "rounds": spec.PHILOX_ROUNDS, "stream_version": spec.STREAM_VERSION},
        "layers": [
            {"name": name, "in_features": m.in_features, "out_features": m.out_features, "seed": str(m.seed),
             "stream": str(m.stream), "init": m.init, "rank": m.rank, "alpha": m.alpha,
             "use_rslora": m.use_rslora, "scaling": m.scaling, "bias": m.bias is not None,
             "fingerprint": backbone_fingerprint(m.spec)}
            for name, m in layers.items()
        ],
        "trainable": trainable,
        "aliases": aliases,
        "tensors": {"file": TENSORS_NAME, "sha256": _sha256(tensor_path), "bytes": tensor_path.stat().st_size},
    }
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def _fail(directory: Path, message: str):
    raise ValueError(f"checkpoint {directory}: {message}")


def read_config(directory: str | os.PathLike) -> dict:
    """The validated JSON config of a checkpoint directory (the tensor file's checksum included)."""
    directory = Path(directory)
    config_path, tensor_path = directory / CONFIG_NAME, directory / TENSORS_NAME
    for path in (config_path, tensor_path):
        if not path.is_file():
            _fail(directory, f"missing file {path.name}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _fail(directory, f"{CONFIG_NAME} is not valid JSON ({exc})")
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        _fail(directory, f"{CONFIG_NAME} is not a {FORMAT_NAME} config")
    if config.get("format_version") != FORMAT_VERSION:
        _fail(directory, f"unknown format_version {config.get('format_version')!r} (this build reads {FORMAT_VERSION})")
    generator = config.get("generator", {})
    if generator.get("stream_version") not in spec.SUPPORTED_STREAM_VERSIONS or \
            generator.get("rounds") != spec.PHILOX_ROUNDS or generator.get("name") != "philox4x32":
        _fail(directory, f"generator {generator!r} is not supported by this build "
                         f"(stream versions {spec.SUPPORTED_STREAM_VERSIONS}, philox4x32-{spec.PHILOX_ROUNDS})")
    layers = config.get("layers")
    if not isinstance(layers, list) or not layers:
        _fail(directory, "config lists no layers")
    required = {"name": str, "in_features": int, "out_features": int, "seed": str, "stream": str, "init": str,
                "rank": int, "alpha": (int, float), "use_rslora": bool, "bias": bool, "fingerprint": str}
    for layer in layers:
        for key, kind in required.items():
            if not isinstance(layer, dict) or not isinstance(layer.get(key), kind):
                _fail(directory, f"layer entry {layer!r} lacks a valid {key!r}")
        try:
            layer["spec"] = BackboneSpec(int(layer["seed"]), int(layer["stream"]), layer["in_features"],
                                         layer["out_features"], layer["init"])
        except (TypeError, ValueError) as exc:
            _fail(directory, f"layer {layer['name']!r}: {exc}")
    tensors = config.get("tensors", {})
    if tensor_path.stat().st_size != tensors.get("bytes"):
        _fail(directory, f"{TENSORS_NAME} has {tensor_path.stat().st_size} bytes, the config records "
                         f"{tensors.get('bytes')}: truncated or replaced")
    if _sha256(tensor_path) != tensors.get("sha256"):
        _fail(directory, f"{TENSORS_NAME} does not match the SHA-256 in the config: corrupted or tampered")
    return config


def load(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Restore a checkpoint written by ``save`` into ``model`` (same architecture, converted).

    Everything is checked first (see the module docstring); then seeds, streams and inits are
    set from the config and every tensor is loaded. Parameters on the meta device are replaced
    by the loaded tensors. Returns ``model``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_config(directory)
    layers = _seeded_layers(model)
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
                             f"{module.rank} in the model but {s.out_features}x{s.in_features} rank "
                             f"{layer['rank']} in the checkpoint")
        if backbone_fingerprint(s) != layer["fingerprint"]:
            _fail(directory, f"layer {layer['name']!r}: the backbone fingerprint differs: this build's "
                             "generator does not reproduce the weights the checkpoint was trained with")
    try:
        tensors = load_file(str(directory / TENSORS_NAME))
    except (SafetensorError, OSError, ValueError) as exc:
        _fail(directory, f"{TENSORS_NAME} cannot be read ({exc})")
    aliases = config.get("aliases", {})
    if not isinstance(aliases, dict) or any(not isinstance(v, str) or v not in tensors for v in aliases.values()):
        _fail(directory, f"aliases {aliases!r} must map names to tensors stored in {TENSORS_NAME}")
    for alias, stored in aliases.items():
        tensors[alias] = tensors[stored]
    expected = {k: v for k, v in _tensors_to_save(model).items()}
    if set(tensors) != set(expected):
        _fail(directory, f"tensors differ from the model's: missing {sorted(set(expected) - set(tensors))[:5]}, "
                         f"unexpected {sorted(set(tensors) - set(expected))[:5]}")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            _fail(directory, f"tensor {key!r} has shape {tuple(value.shape)}, the model has "
                             f"{tuple(expected[key].shape)}")

    for layer in config["layers"]:
        tensors[f"{layer['name']}._extra_state" if layer["name"] else "_extra_state"] = extra_state(
            layer["spec"], layer["rank"], float(layer["alpha"]), layer["use_rslora"])
    on_meta = any(t.device.type == "meta" for t in list(model.parameters()) + list(model.buffers()))
    if on_meta:
        model.load_state_dict(tensors, strict=True, assign=True)
        if aliases and hasattr(model, "tie_weights"):
            model.tie_weights()  # assign=True gives each name its own Parameter; tie them again
    else:
        model.load_state_dict(tensors, strict=True)
    return model


def describe(directory: str | os.PathLike) -> str:
    """What a checkpoint holds: its layers, the bytes stored, and the same model with stored fp16
    weights (its backbones plus every stored tensor at 2 bytes a value, adapters excluded)."""
    from safetensors import safe_open

    directory = Path(directory)
    config = read_config(directory)
    with safe_open(str(directory / TENSORS_NAME), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    adapter_keys = {k for k in shapes if k.endswith((".lora_A", ".lora_B", ".beta"))}
    adapter_values = sum(math.prod(shapes[k]) for k in adapter_keys)
    other_values = sum(math.prod(s) for k, s in shapes.items() if k not in adapter_keys)
    backbone_values = sum(l["in_features"] * l["out_features"] for l in config["layers"])
    stored = sum((directory / n).stat().st_size for n in (CONFIG_NAME, TENSORS_NAME))
    dense_fp16 = 2 * (backbone_values + other_values)
    lines = [f"{directory}: {FORMAT_NAME} v{config['format_version']}, generator "
             f"philox4x32-{config['generator']['rounds']} stream v{config['generator']['stream_version']}",
             "", "| layer | shape (out x in) | rank | init | seed | stream |", "|---|---|---|---|---|---|"]
    for l in config["layers"]:
        lines.append(f"| {l['name']} | {l['out_features']} x {l['in_features']} | {l['rank']} | {l['init']} | "
                     f"{l['seed']} | {l['stream']} |")
    lines += ["", f"seeded layers: {len(config['layers'])}, backbone values regenerated (never stored): "
                  f"{backbone_values:,}",
              f"stored tensors: {len(shapes)} ({adapter_values:,} adapter/beta values, {other_values:,} other values)",
              f"bytes stored: {stored:,} ({stored / 2**20:.2f} MiB)",
              f"same model with stored fp16 weights: {dense_fp16:,} bytes ({dense_fp16 / 2**20:.2f} MiB), "
              f"{dense_fp16 / stored:.1f}x the checkpoint"]
    return "\n".join(lines)
