"""The config's schema and content: every key, type and value a reader relies on, checked before
anything is built from it."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from lottalora_kernels.stream import spec

from ..backbone import BackboneSpec
from ..nn.adapters import DEFAULT_ADAPTER, check_adapter_name
from ..nn.options import check_alpha, check_dropout, lora_scaling
from .config_json import config_checksum, nesting_depth
from .format import (
    ADAPTER_KEYS,
    CONFIG_NAME,
    FORMAT_NAME,
    GENERATOR_KEYS,
    HEX16,
    HEX64,
    LAYER_KEYS,
    MAX_CONFIG_NESTING,
    MAX_RANK,
    OPTIONAL_LAYER_KEYS,
    OPTIONAL_TOP_KEYS,
    READABLE_FORMAT_VERSIONS,
    TENSORS_KEYS,
    TENSORS_NAME,
    TOP_KEYS,
    U64_DECIMAL,
    fail,
    shorten,
)


def json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(directory: Path, what: str, value, keys: set[str], optional: set[str] = frozenset()) -> None:
    if not isinstance(value, dict):
        fail(directory, f"{what} must be a JSON object, got {json_type(value)}")
    missing, unknown = sorted(keys - set(value)), sorted(set(value) - keys - optional)
    if missing or unknown:
        also = f" (and may have {sorted(optional)})" if optional else ""
        fail(directory, f"{what} must have the keys {sorted(keys)}{also}: missing {missing}, unknown "
                         f"{shorten(unknown)}")


def _check_scaling(fail_key, what: dict, rank: int, alpha: float) -> None:
    scaling = lora_scaling(rank, alpha, what["use_rslora"])
    if isinstance(what["scaling"], bool) or not isinstance(what["scaling"], (int, float)) or \
            what["scaling"] != scaling:
        fail_key("scaling", f"{scaling!r}, what rank {rank}, alpha {alpha!r} and use_rslora {what['use_rslora']} give")


def _check_dropout(directory: Path, where: str, value) -> None:
    try:
        check_dropout(value)
    except ValueError as exc:
        fail(directory, f"{where}: {exc}")


def _check_named_adapters(directory: Path, where: str, adapters) -> None:
    """A layer's "adapters": {name: {1 <= rank <= MAX_RANK, alpha, use_rslora, scaling, lora_dropout}}."""
    if not isinstance(adapters, dict) or not adapters:
        fail(directory, f"{where}: adapters must be a non-empty JSON object, got {shorten(adapters)}")
    for name, adapter in adapters.items():
        try:
            check_adapter_name(name)
        except ValueError as exc:
            fail(directory, f"{where}: {exc}")
        if name == DEFAULT_ADAPTER:
            fail(directory, f"{where}: adapters lists {DEFAULT_ADAPTER!r}, which is the layer's own rank and alpha")
        at = f"{where} adapter {name!r}"
        _check_keys(directory, at, adapter, ADAPTER_KEYS)

        def bad(key: str, expected: str, adapter=adapter, at=at):
            fail(directory, f"{at}: {key} must be {expected}, got {shorten(adapter[key])}")

        if not is_int(adapter["rank"]) or not 1 <= adapter["rank"] <= MAX_RANK:
            bad("rank", f"an integer in [1, {MAX_RANK}]")
        if not isinstance(adapter["use_rslora"], bool):
            bad("use_rslora", "true or false")
        try:
            alpha = check_alpha(adapter["alpha"])
        except ValueError as exc:
            fail(directory, f"{at}: {exc}")
        _check_scaling(bad, adapter, adapter["rank"], alpha)
        _check_dropout(directory, at, adapter["lora_dropout"])


def _check_generator(directory: Path, generator, format_version: int) -> None:
    _check_keys(directory, "generator", generator, GENERATOR_KEYS)
    version = generator["stream_version"]
    if generator["name"] != "philox4x32" or not is_int(generator["rounds"]) or \
            generator["rounds"] != spec.PHILOX_ROUNDS or not is_int(version) or \
            version not in spec.SUPPORTED_STREAM_VERSIONS:
        fail(directory, f"generator {shorten(generator)} is not supported by this build "
                         f"(stream versions {spec.SUPPORTED_STREAM_VERSIONS}, philox4x32-{spec.PHILOX_ROUNDS})")
    # Format 1 was written only with stream 1. A later stream there would be a format-2
    # checkpoint rewritten as format 1, which has no checksum: any edit of it would go unseen.
    if format_version == 1 and version != 1:
        fail(directory, f"generator stream_version {version} in a format_version 1 config: format 1 holds stream "
                         "version 1 only")


def _check_layer(directory: Path, index: int, layer, format_version: int, generator: dict,
                 adapter_file: bool) -> BackboneSpec:
    """The layer entry's BackboneSpec, after checking every field and the stored scaling."""
    _check_keys(directory, f"layers[{index}]", layer, LAYER_KEYS[format_version], OPTIONAL_LAYER_KEYS[format_version])
    where = f"layers[{index}] ({shorten(layer['name'])})" if isinstance(layer["name"], str) else f"layers[{index}]"

    def bad(key: str, expected: str):
        fail(directory, f"{where}: {key} must be {expected}, got {shorten(layer[key])}")

    if not isinstance(layer["name"], str):
        bad("name", "a string")
    for key in ("in_features", "out_features"):
        if not is_int(layer[key]) or layer[key] <= 0:
            bad(key, "a positive integer")
    for key in ("seed", "stream"):
        if not isinstance(layer[key], str) or not U64_DECIMAL.fullmatch(layer[key]):
            bad(key, "an unsigned 64-bit integer in decimal digits, as a string")
    if not is_int(layer["rank"]) or not 0 <= layer["rank"] <= MAX_RANK:
        bad("rank", f"an integer in [0, {MAX_RANK}]")
    for key in ("use_rslora", "bias"):
        if not isinstance(layer[key], bool):
            bad(key, "true or false")
    try:
        alpha = check_alpha(layer["alpha"], zero_ok=layer["rank"] == 0)
    except ValueError as exc:
        fail(directory, f"{where}: {exc}")
    _check_scaling(bad, layer, layer["rank"], alpha)
    if "weight_shape" in layer:
        shape = layer["weight_shape"]
        if not (isinstance(shape, list) and len(shape) in (3, 4) and all(is_int(v) and v > 0 for v in shape)
                and shape[0] == layer["out_features"] and math.prod(shape[1:]) == layer["in_features"]):
            bad("weight_shape", "a seeded conv's [out_features, in_channels // groups, *kernel_size] (positive "
                                "integers whose product after the first is in_features)")
    if "use_dora" in layer and (layer["use_dora"] is not True or layer["rank"] < 1):
        fail(directory, f"{where}: use_dora is recorded only as true, on a layer of rank >= 1, got "
                         f"{shorten(layer['use_dora'])} at rank {shorten(layer['rank'])}")
    if adapter_file:
        if "adapters" in layer or "lora_dropout" not in layer or layer["rank"] < 1:
            fail(directory, f"{where}: a layer of an adapter checkpoint has rank >= 1 and lora_dropout, and no "
                             "adapters")
        _check_dropout(directory, where, layer["lora_dropout"])
    else:
        if "lora_dropout" in layer:
            fail(directory, f"{where}: lora_dropout is recorded only in adapter checkpoints")
        if "adapters" in layer:
            _check_named_adapters(directory, where, layer["adapters"])
    if not isinstance(layer["fingerprint"], str) or not HEX16.fullmatch(layer["fingerprint"]):
        bad("fingerprint", "16 lowercase hex digits")
    stream_version = layer["stream_version"] if format_version >= 2 else generator["stream_version"]
    if not is_int(stream_version) or stream_version not in spec.SUPPORTED_STREAM_VERSIONS or \
            stream_version > generator["stream_version"]:
        bad("stream_version", f"one of {spec.SUPPORTED_STREAM_VERSIONS} and at most the generator's "
                              f"{generator['stream_version']}")
    try:
        return BackboneSpec(int(layer["seed"]), int(layer["stream"]), layer["in_features"], layer["out_features"],
                            layer["init"], stream_version)
    except (TypeError, ValueError) as exc:
        fail(directory, f"{where}: {exc}")


def _is_adapter_name(name) -> bool:
    try:
        check_adapter_name(name)
    except ValueError:
        return False
    return True


def check_config(directory: Path, config) -> None:
    """Schema and content of a parsed config; adds each layer's "spec" (a BackboneSpec)."""
    if nesting_depth(config) > MAX_CONFIG_NESTING:
        fail(directory, f"{CONFIG_NAME} nests deeper than {MAX_CONFIG_NESTING} levels")
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        fail(directory, f"{CONFIG_NAME} is not a {FORMAT_NAME} config")
    version = config.get("format_version")
    if not is_int(version) or version not in READABLE_FORMAT_VERSIONS:
        fail(directory, f"unknown format_version {shorten(version)} (this build reads {READABLE_FORMAT_VERSIONS})")
    _check_keys(directory, CONFIG_NAME, config, TOP_KEYS[version], OPTIONAL_TOP_KEYS[version])
    adapter_file = "adapter" in config
    if adapter_file and not (config["adapter"] == DEFAULT_ADAPTER or _is_adapter_name(config["adapter"])):
        fail(directory, f"adapter must be an adapter name (an identifier), got {shorten(config['adapter'])}")
    if version >= 2 and config["config_sha256"] != config_checksum(config):
        fail(directory, f"{CONFIG_NAME} does not match its config_sha256: edited or corrupted")
    _check_generator(directory, config["generator"], version)
    layers = config["layers"]
    if not isinstance(layers, list) or not layers:
        fail(directory, "config lists no layers")
    specs = [_check_layer(directory, i, layer, version, config["generator"], adapter_file)
             for i, layer in enumerate(layers)]
    repeated = sorted(name for name, count in Counter(layer["name"] for layer in layers).items() if count > 1)
    if repeated:
        fail(directory, f"layers list a name twice: {shorten(repeated)}")
    trainable, aliases = config["trainable"], config["aliases"]
    if not isinstance(trainable, list) or not all(isinstance(n, str) for n in trainable):
        fail(directory, f"trainable must be a list of names, got {json_type(trainable)}")
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        fail(directory, f"aliases must map names to stored tensor names, got {shorten(aliases)}")
    _check_keys(directory, "tensors", config["tensors"], TENSORS_KEYS)
    tensors = config["tensors"]
    if tensors["file"] != TENSORS_NAME or not isinstance(tensors["sha256"], str) or \
            not HEX64.fullmatch(tensors["sha256"]) or not is_int(tensors["bytes"]) or tensors["bytes"] < 0:
        fail(directory, f"tensors must be {{'file': {TENSORS_NAME!r}, 'sha256': 64 hex digits, 'bytes': an "
                         f"integer}}, got {shorten(tensors)}")
    for layer, spec_ in zip(layers, specs, strict=True):
        layer["spec"] = spec_
