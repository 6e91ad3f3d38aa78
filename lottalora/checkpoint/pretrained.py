"""A converted transformers model rebuilt from its checkpoint directory alone.

``from_pretrained`` reads the ``config.json`` that ``lottalora.save`` wrote
(``model_config``), builds that architecture on the meta device, puts a seeded layer where the
checkpoint lists one (shape, rank, alpha, init, stream version, seed and stream from the
checkpoint's own layer entries), checks the stored tensors against it, materializes the rest
(so that shapes the tensors lack are never allocated), loads the tensors, and restores which
parameters train and each layer's lora_dropout. Only classes that transformers itself exports
are built; nothing from the directory is run.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.conv_layers import is_dense_conv, seeded_conv_like
from ..model.load_check import check_loads_whole
from ..model.materialize import materialize
from ..model.modules import linear_shape, module_places, set_submodule
from ..model.placement import check_device, check_floating_dtype
from ..model.pretrained_class import adopt_seeded_class
from ..model.records import restore_call
from ..nn import SEEDED_LAYER_TYPES, Linear
from .files import read_checkpoint, read_json, tensor_contents
from .format import ADAPTER_ONLY, CONFIG_NAME, MODEL_CONFIG_NAME, TRAINABLE_ONLY, fail
from .loading import load_checked
from .model_config import architecture_class, architecture_config, build_architecture, read_model_config
from .schema import json_type

# Config options that transformers' from_dict takes by a name the config does not have as an
# attribute (it keeps them as "_<name>_internal" behind a private "_<name>" property).
IMPLEMENTATION_OPTIONS = ("attn_implementation", "experts_implementation")
GENERATION_CONFIG_NAME = "generation_config.json"


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


def from_pretrained(directory: str | os.PathLike, *, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, is_trainable: bool = False,
                    config_updates: Mapping[str, Any] | None = None) -> nn.Module:
    """The converted transformers model that ``lottalora.save`` or a converted model's
    ``save_pretrained`` wrote to ``directory``.

    Built from the directory alone: the architecture and its config, each seeded layer from the
    checkpoint (backbone, rank, alpha, rsLoRA, named adapters), the stored tensors, and each
    layer's lora_dropout; the convert calls are recorded on the model again, so saving it
    writes them back, and the model gets the class ``convert`` gives (its ``save_pretrained``
    writes a lottalora directory). ``dtype`` (float32, float16, bfloat16 or float64) defaults to the one
    the model was saved in; ``device`` (a torch.device or its name) is where its tensors go.
    Returned in eval mode, as transformers' from_pretrained returns models, with the default
    adapter active.

    ``is_trainable`` (PEFT's): False (the default) returns every parameter frozen, for
    inference; True restores which parameters required grad when it was saved, to train on.
    A checkpoint saved with ``trainable_only=True`` or ``adapter=`` holds no base weights and is
    refused: build the base model, convert it the same way and ``lottalora.load`` it.

    ``config_updates`` sets attributes of the architecture's config before the model is built,
    as transformers' ``from_pretrained`` takes config options (``{"attn_implementation":
    "eager", "use_cache": False}``); one that changes the architecture's shapes fails the load
    by name.
    """
    if not isinstance(is_trainable, bool):
        raise TypeError(f"is_trainable must be a bool, got {is_trainable!r}")
    device = check_device(device)
    if dtype is not None:
        check_floating_dtype(dtype)
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() and (directory / "model.safetensors").is_file():
        fail(directory, f"has no {CONFIG_NAME}: it looks written by transformers' save_pretrained, which "
                         "stores no seeds' config; save converted models with lottalora.save(model, directory)")
    checkpoint, data = read_checkpoint(directory)  # once: the tensor file can be gigabytes
    if tensor_contents(directory, data) in (TRAINABLE_ONLY, ADAPTER_ONLY):
        fail(directory, "holds only the trained tensors (saved with trainable_only=True or adapter=), not the base "
                         "model's: build the base model, convert it the same way and call lottalora.load")
    model_config = read_model_config(directory)
    if dtype is None:
        dtype = getattr(torch, model_config["dtype"])
    cls = architecture_class(directory, model_config["architecture"])
    base_config = architecture_config(directory, cls, model_config["base_config"])
    updates = dict(config_updates or {})
    unknown = sorted(k for k in updates if k not in IMPLEMENTATION_OPTIONS and not hasattr(base_config, k))
    if unknown:  # from_dict would drop them: a typo would leave the option as saved
        raise ValueError(f"config_updates {unknown} are not options of {type(base_config).__name__}")
    if updates:
        base_config = architecture_config(directory, cls, model_config["base_config"], updates)
    with _default_dtype(dtype), torch.device("meta"):
        model = build_architecture(directory, cls, base_config)
    places_of = module_places(model)
    for layer in checkpoint["layers"]:
        _place_seeded_layer(directory, model, layer, dtype, places_of)
    def prepare():  # once the tensors are checked against the meta-built model's shapes
        materialize(model, device)
        _keep_in_float32(model, dtype)

    load_checked(model, directory, checkpoint, data, prepare=prepare)
    del data
    trainable = set(checkpoint["trainable"]) if is_trainable else set()
    for name, param in model.named_parameters(remove_duplicate=False):
        param.requires_grad_(name in trainable)
    _restore_convert_calls(directory, model, model_config["convert_calls"])
    check_loads_whole(model)  # as convert does: a later load_state_dict is all or nothing
    _restore_generation_config(directory, model)
    adopt_seeded_class(model)
    return model.eval()


def _keep_in_float32(model: nn.Module, dtype: torch.dtype) -> None:
    """What a class keeps in float32 stays float32 under a float16 load (``_keep_in_fp32_modules``)
    or a float16 / bfloat16 one (``_keep_in_fp32_modules_strict``), seeded or dense, as in
    transformers' from_pretrained (which matches the entries by regex search): the tensors whose
    names hold an entry as a dotted part, a module's (T5's ``wo``, whose float16 products
    overflow) or a parameter's (RWKV's ``time_decay``, MoE routers' ``gate.weight``). Before the
    load, so float32 tensors of the checkpoint arrive unrounded."""
    keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ()) \
        if dtype in (torch.float16, torch.bfloat16) else set()
    if dtype == torch.float16:
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    if not keep:
        return
    kept = re.compile("|".join(rf"(^|\.){re.escape(key)}(\.|$)" for key in sorted(keep)))
    for module_name, module in model.named_modules(remove_duplicate=False):  # a module at two names: either
        for kind in ("_parameters", "_buffers"):
            for name, tensor in getattr(module, kind).items():
                full = f"{module_name}.{name}" if module_name else name
                if tensor is not None and tensor.is_floating_point() and kept.search(full):
                    tensor.data = tensor.data.to(torch.float32)  # in place: tied names stay one tensor


def _restore_generation_config(directory: Path, model: nn.Module) -> None:
    """The generation_config.json that save_pretrained writes beside a model that generates."""
    path = directory / GENERATION_CONFIG_NAME
    present = path.exists() or path.is_symlink()  # a dangling link or a directory is named, not skipped
    if present and getattr(model, "generation_config", None) is not None:
        from transformers import GenerationConfig

        # Read as strictly as the other files first: GenerationConfig takes any JSON value, and a
        # list raised TypeError from inside it.
        read = read_json(directory, GENERATION_CONFIG_NAME)
        if not isinstance(read, dict):
            fail(directory, f"{GENERATION_CONFIG_NAME} must be a JSON object, got {json_type(read)}")
        try:
            model.generation_config = GenerationConfig.from_pretrained(directory)
        except (OSError, ValueError) as exc:
            fail(directory, f"{GENERATION_CONFIG_NAME} cannot be read ({exc})")


def _place_seeded_layer(directory: Path, model: nn.Module, layer: dict, dtype: torch.dtype,
                        places_of: dict[int, list[str]]) -> None:
    """The checkpoint's seeded ``layer`` in place of the model's dense one, at every name that
    module sits at (``places_of``: ``module_places`` of the model; one module placed twice is one
    layer, as convert made it)."""
    name, spec = layer["name"], layer["spec"]
    try:
        module = model.get_submodule(name)
    except AttributeError:
        fail(directory, f"layer {name!r} is not a module of {type(model).__name__}")
    places = places_of[id(module)]
    if is_dense_conv(module):
        try:
            seeded = seeded_conv_like(module, spec, rank=layer["rank"], alpha=layer["alpha"] if layer["rank"] else None,
                                      use_rslora=layer["use_rslora"], use_dora=layer.get("use_dora", False),
                                      device="meta", dtype=dtype)
        except ValueError as exc:
            fail(directory, f"layer {name!r}: {exc}")
        for place in places:
            set_submodule(model, place, seeded)
        return
    shape = linear_shape(module)
    if shape != (spec.in_features, spec.out_features):
        what = f"{shape[0]} -> {shape[1]} features" if shape else f"a {type(module).__name__}, not a linear layer"
        fail(directory, f"layer {name!r} is {what} in {type(model).__name__}, where the checkpoint holds a seeded "
                         f"layer of {spec.in_features} -> {spec.out_features} features")
    seeded = Linear(spec.in_features, spec.out_features, bias=layer["bias"], rank=layer["rank"],
                    alpha=layer["alpha"] if layer["rank"] else None, use_rslora=layer["use_rslora"],
                    seed=spec.seed, stream=spec.stream, init=spec.init, stream_version=spec.version,
                    use_dora=layer.get("use_dora", False), device="meta", dtype=dtype)
    for adapter, entry in layer.get("adapters", {}).items():
        seeded.add_adapter(adapter, rank=entry["rank"], alpha=entry["alpha"], use_rslora=entry["use_rslora"],
                           lora_dropout=entry["lora_dropout"])
    seeded.merges_into_conv1d = not isinstance(module, nn.Linear)  # as convert marks it
    for place in places:
        set_submodule(model, place, seeded)


def _restore_convert_calls(directory: Path, model: nn.Module, calls: list[dict]) -> None:
    for order, call in enumerate(calls):
        prefix = call["module"]
        try:
            owner = model.get_submodule(prefix) if prefix else model
        except AttributeError:
            fail(directory, f"{MODEL_CONFIG_NAME} records a convert call on {prefix!r}, not a module of the model")
        dropout = call["arguments"].get("lora_dropout", 0.0)  # checked by read_model_config
        for name in call["converted"]:
            try:
                layer = owner.get_submodule(name)
            except AttributeError:
                fail(directory, f"{MODEL_CONFIG_NAME} records a convert call on {prefix!r} that converted {name!r}, "
                                 f"not a module of {type(owner).__name__}")
            if isinstance(layer, SEEDED_LAYER_TYPES) and layer.rank > 0:
                layer.lora_dropout = float(dropout)
        restore_call(owner, call, order)
