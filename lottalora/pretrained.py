"""A converted transformers model rebuilt from its checkpoint directory alone.

``lottalora.save`` writes, beside the seed-only checkpoint, a ``config.json`` for transformers
models: the architecture's class and config, the dtype, and every ``convert`` call (arguments
and the layers it converted). ``from_pretrained`` builds that architecture on the meta device,
puts a seeded layer where the checkpoint lists one (shape, rank, alpha, init, stream version,
seed and stream from the checkpoint's own layer entries), materializes the rest, loads the
tensors, and restores which parameters train and each layer's lora_dropout.

The ``config.json`` says ``"model_type": "lottalora"``: plain transformers
(``AutoModelForCausalLM.from_pretrained``) refuses the directory with an error naming that model
type instead of building the architecture with fresh random weights where the seeds were.
Only classes that transformers itself exports are built; nothing from the directory is run.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (CONFIG_NAME, MODEL_CONFIG_NAME, TRAINABLE_ONLY, _fail, _read_checkpoint, _tensor_contents,
                         load_read)
from .convert import CONVERT_CALLS_ATTR, _linear_shape, _set_submodule, check_loads_whole, materialize
from .linear import Linear
from .wrappers import plain_name

MODEL_TYPE = "lottalora"
MODEL_FORMAT = "lottalora-model"
MODEL_FORMAT_VERSION = 1
_NOTE = ("A lottalora seed-only checkpoint: its linear layers are seeds plus adapters, not weights. "
         "Rebuild it with lottalora.from_pretrained(directory); plain transformers cannot load it.")


def _transformers_class(cls: type) -> type | None:
    """The transformers model class ``cls`` is or derives from (FSDP2 subclasses the model's class)."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("transformers.") and hasattr(klass, "config_class"):
            return klass
    return None


def _dominant_dtype(model: nn.Module) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def convert_calls(model: nn.Module) -> list[dict]:
    """Every convert call recorded on ``model`` or its submodules, in the order they were made:
    {"module": plain name of the module converted ("" for the root), "arguments", "converted"}."""
    calls = []
    for name, module in model.named_modules():
        for call in module.__dict__.get(CONVERT_CALLS_ATTR, ()):
            calls.append({"module": plain_name(name), **call})
    calls.sort(key=lambda c: c["order"])
    return [{k: v for k, v in c.items() if k != "order"} for c in calls]


def model_config_for_save(model: nn.Module) -> dict | None:
    """The ``config.json`` content for a transformers model, or None for any other module."""
    architecture = _transformers_class(type(model))
    config = getattr(model, "config", None)
    if architecture is None or not hasattr(config, "to_json_string"):
        return None
    import transformers

    return {
        "model_type": MODEL_TYPE,
        "lottalora_format": MODEL_FORMAT,
        "lottalora_format_version": MODEL_FORMAT_VERSION,
        "note": _NOTE,
        "architecture": architecture.__name__,
        "base_config": json.loads(config.to_json_string(use_diff=False)),
        "dtype": str(_dominant_dtype(model)).removeprefix("torch."),
        "transformers_version": transformers.__version__,
        "convert_calls": convert_calls(model),
    }


def read_model_config(directory: str | os.PathLike) -> dict:
    """The validated ``config.json`` that ``save`` wrote for a transformers model."""
    directory = Path(directory)
    path = directory / MODEL_CONFIG_NAME
    if not path.is_file():
        _fail(directory, f"has no {MODEL_CONFIG_NAME}: it was saved from a model that is not a transformers "
                         "model, so nothing records its architecture; build and convert the model in code, then "
                         "call lottalora.load(model, directory)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _fail(directory, f"{MODEL_CONFIG_NAME} is not valid JSON ({exc})")
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        _fail(directory, f"{MODEL_CONFIG_NAME} has model_type {config.get('model_type')!r} where "
                         f"{MODEL_TYPE!r} was expected: not written by lottalora.save")
    if config.get("lottalora_format") != MODEL_FORMAT or config.get("lottalora_format_version") != MODEL_FORMAT_VERSION:
        _fail(directory, f"{MODEL_CONFIG_NAME} is format {config.get('lottalora_format')!r} version "
                         f"{config.get('lottalora_format_version')!r}; this build reads {MODEL_FORMAT!r} version "
                         f"{MODEL_FORMAT_VERSION}")
    kinds = {"architecture": str, "base_config": dict, "dtype": str, "convert_calls": list}
    for key, kind in kinds.items():
        if not isinstance(config.get(key), kind):
            _fail(directory, f"{MODEL_CONFIG_NAME} lacks a valid {key!r} ({kind.__name__} expected)")
    if not isinstance(getattr(torch, config["dtype"], None), torch.dtype):
        _fail(directory, f"{MODEL_CONFIG_NAME} records dtype {config['dtype']!r}, which is not a torch dtype")
    for call in config["convert_calls"]:
        if not (isinstance(call, dict) and isinstance(call.get("module"), str)
                and isinstance(call.get("arguments"), dict) and isinstance(call.get("converted"), list)):
            _fail(directory, f"{MODEL_CONFIG_NAME} has a malformed convert call {call!r}")
    return config


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """Build under ``dtype`` as transformers' from_pretrained does (buffers it computes in
    float32, such as rotary frequencies, stay float32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _architecture(directory: Path, name: str) -> type:
    import transformers

    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        _fail(directory, f"architecture {name!r} is not a model class of transformers {transformers.__version__}")
    return cls


def from_pretrained(directory: str | os.PathLike, *, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> nn.Module:
    """The converted transformers model that ``lottalora.save`` wrote to ``directory``.

    Built from the directory alone: the architecture and its config, each seeded layer from the
    checkpoint (backbone, rank, alpha, rsLoRA), the stored tensors, which parameters train, and
    each layer's lora_dropout; the convert calls are recorded on the model again, so saving it
    writes them back. ``dtype`` defaults to the one the model was saved in; ``device`` is where
    its tensors go. Returned in eval mode, as transformers' from_pretrained returns models.
    A checkpoint saved with ``trainable_only=True`` holds no base weights and is refused: build
    the base model, convert it the same way and ``lottalora.load`` it.
    """
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() and (directory / "model.safetensors").is_file():
        _fail(directory, f"has no {CONFIG_NAME}: it looks written by transformers' save_pretrained, which "
                         "stores no seeds' config; save converted models with lottalora.save(model, directory)")
    checkpoint, data = _read_checkpoint(directory)  # once: the tensor file can be gigabytes
    model_config = read_model_config(directory)
    if _tensor_contents(directory, data) == TRAINABLE_ONLY:
        _fail(directory, "holds only the trained tensors (saved with trainable_only=True), not the base "
                         "model's: build the base model, convert it the same way and call lottalora.load")
    if dtype is None:
        dtype = getattr(torch, model_config["dtype"])
    cls = _architecture(directory, model_config["architecture"])
    base_config = cls.config_class.from_dict(model_config["base_config"])
    with _default_dtype(dtype), torch.device("meta"):
        model = cls(base_config)
    for layer in checkpoint["layers"]:
        _place_seeded_layer(directory, model, layer, dtype)
    materialize(model, device)
    load_read(model, directory, checkpoint, data)
    del data
    trainable = set(checkpoint["trainable"])
    for name, param in model.named_parameters(remove_duplicate=False):
        param.requires_grad_(name in trainable)
    _restore_convert_calls(directory, model, model_config["convert_calls"])
    check_loads_whole(model)  # as convert does: a later load_state_dict is all or nothing
    return model.eval()


def _place_seeded_layer(directory: Path, model: nn.Module, layer: dict, dtype: torch.dtype) -> None:
    name, spec = layer["name"], layer["spec"]
    try:
        module = model.get_submodule(name)
    except AttributeError:
        _fail(directory, f"layer {name!r} is not a module of {type(model).__name__}")
    if _linear_shape(module) != (spec.in_features, spec.out_features):
        _fail(directory, f"layer {name!r} is a {type(module).__name__} in {type(model).__name__}, not a linear "
                         f"layer of {spec.in_features} -> {spec.out_features} features")
    seeded = Linear(spec.in_features, spec.out_features, bias=layer["bias"], rank=layer["rank"],
                    alpha=layer["alpha"] if layer["rank"] else None, use_rslora=layer["use_rslora"],
                    seed=spec.seed, stream=spec.stream, init=spec.init, stream_version=spec.version,
                    device="meta", dtype=dtype)
    if not isinstance(module, nn.Linear):
        seeded.merges_into_conv1d = True  # as convert marks it
    _set_submodule(model, name, seeded)


def _restore_convert_calls(directory: Path, model: nn.Module, calls: list[dict]) -> None:
    for order, call in enumerate(calls):
        prefix = call["module"]
        try:
            owner = model.get_submodule(prefix) if prefix else model
        except AttributeError:
            _fail(directory, f"{MODEL_CONFIG_NAME} records a convert call on {prefix!r}, not a module of the model")
        dropout = call["arguments"].get("lora_dropout", 0.0)
        for name in call["converted"]:
            layer = owner.get_submodule(name)
            if isinstance(layer, Linear) and layer.rank > 0:
                layer.lora_dropout = float(dropout)
        recorded = owner.__dict__.setdefault(CONVERT_CALLS_ATTR, [])
        recorded.append({"order": -len(calls) + order, "arguments": call["arguments"], "converted": call["converted"]})
