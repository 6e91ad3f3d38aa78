"""The ``config.json`` that ``lottalora.save`` writes beside a converted transformers model's
checkpoint: the architecture's class and config, the dtype, and every ``convert`` call.

It says ``"model_type": "lottalora"``: plain transformers (``AutoModelForCausalLM.from_pretrained``)
refuses the directory with an error naming that model type instead of building the
architecture with fresh random weights where the seeds were.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..model.placement import check_floating_dtype
from ..model.pretrained_class import base_class
from ..model.records import convert_calls
from ..nn.options import check_dropout
from .files import read_json
from .format import MODEL_CONFIG_NAME, fail, shorten
from .schema import json_type

MODEL_TYPE = "lottalora"
MODEL_FORMAT = "lottalora-model"
MODEL_FORMAT_VERSION = 1
_NOTE = ("A lottalora seed-only checkpoint: its linear layers are seeds plus adapters, not weights. "
         "Rebuild it with lottalora.from_pretrained(directory); plain transformers cannot load it.")


def _transformers_class(cls: type) -> type | None:
    """The transformers model class ``cls`` is or derives from (FSDP2 subclasses the model's class),
    where transformers exports it: a part of a model (T5's ``T5Stack``, a model's encoder) is no
    class from_pretrained can build, so it is saved as any module is (no config.json: built in
    code, then ``lottalora.load``)."""
    for klass in base_class(cls).__mro__:
        if klass.__module__.startswith("transformers.") and hasattr(klass, "config_class"):
            # A class built on a *PreTrainedModel base (a user's own head) is no architecture either.
            exported = exported_model_class(klass.__name__) is klass
            return klass if exported and not klass.__name__.endswith("PreTrainedModel") else None
    return None


def exported_model_class(name: str) -> type | None:
    """The model class transformers exports as ``name``, with a config class of its own
    (``PreTrainedModel`` has none), or None: the only classes a directory's config builds."""
    import transformers

    cls = getattr(transformers, name, None)
    config_class = getattr(cls, "config_class", None)
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel) and isinstance(config_class, type) \
            and issubclass(config_class, transformers.PreTrainedConfig):
        return cls
    return None


def _dominant_dtype(model: nn.Module) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def model_config_for_save(model: nn.Module) -> dict | None:
    """The ``config.json`` content for a transformers model, or None for any other module."""
    architecture = _transformers_class(type(model))
    config = getattr(model, "config", None)
    if architecture is None or not hasattr(config, "to_json_string"):
        return None
    import transformers

    base_config = json.loads(config.to_json_string(use_diff=False))
    if any(_tie_flags(base_config)) and not _embeddings_tied(model):
        # The config says tied but the model holds two tensors (set_input_embeddings without
        # tie_weights): rebuilt from the config, the two names would be one tensor, and the
        # checkpoint's two values would be refused. The saved model is untied; so is its record,
        # at the top and in every sub-config that carries the flag (LLaVA copies its text config's).
        _untie(base_config)
        if any(_tie_flags(json.loads(type(config).from_dict(base_config).to_json_string(use_diff=False)))):
            raise ValueError(f"{architecture.__name__} ties its input and output embeddings whatever its config says, "
                             "and this model holds them as two tensors, which no directory of it can load: tie them "
                             "again (model.tie_weights()) before saving")
    return {
        "model_type": MODEL_TYPE,
        "lottalora_format": MODEL_FORMAT,
        "lottalora_format_version": MODEL_FORMAT_VERSION,
        "note": _NOTE,
        "architecture": architecture.__name__,
        "base_config": base_config,
        "dtype": str(_dominant_dtype(model)).removeprefix("torch."),
        "transformers_version": transformers.__version__,
        "convert_calls": convert_calls(model),
    }


def _tie_flags(config: dict) -> list:
    """The ``tie_word_embeddings`` values of a config's dict and of its sub-configs at any depth."""
    found = [config["tie_word_embeddings"]] if "tie_word_embeddings" in config else []
    return found + [f for v in config.values() if isinstance(v, dict) for f in _tie_flags(v)]


def _untie(config: dict) -> None:
    """Every ``tie_word_embeddings`` of the dict and its sub-configs set to False."""
    if "tie_word_embeddings" in config:
        config["tie_word_embeddings"] = False
    for value in config.values():
        if isinstance(value, dict):
            _untie(value)


def _embeddings_tied(model: nn.Module) -> bool:
    """Whether the input and output embeddings are one tensor (True where there are not both)."""
    embeddings = [getattr(model, f"get_{kind}_embeddings", lambda: None)() for kind in ("input", "output")]
    if any(e is None or not hasattr(e, "weight") for e in embeddings):
        return True
    return embeddings[0].weight is embeddings[1].weight


def read_model_config(directory: str | os.PathLike) -> dict:
    """The validated ``config.json`` that ``save`` wrote for a transformers model."""
    directory = Path(directory)
    # Parsed as strictly as lottalora_config.json: json.loads takes NaN (an rms_norm_eps of NaN
    # made every logit NaN) and keeps the last of repeated keys without a word. Bare infinities
    # are taken: transformers 4 wrote Mamba2's time_step_limit so.
    config = read_json(directory, MODEL_CONFIG_NAME, infinities=True, missing=(
        f"has no {MODEL_CONFIG_NAME}: it was saved from a model that is not a transformers model (or from a part "
        "of one, such as its encoder, which from_pretrained cannot build), so nothing records its architecture; "
        "build and convert the model in code, then call lottalora.load(model, directory)"))
    if not isinstance(config, dict):
        fail(directory, f"{MODEL_CONFIG_NAME} must be a JSON object, got {json_type(config)}: not written by "
                         "lottalora.save")
    if config.get("model_type") != MODEL_TYPE:
        fail(directory, f"{MODEL_CONFIG_NAME} has model_type {shorten(config.get('model_type'))} where "
                         f"{MODEL_TYPE!r} was expected: not written by lottalora.save")
    if config.get("lottalora_format") != MODEL_FORMAT or config.get("lottalora_format_version") != MODEL_FORMAT_VERSION:
        fail(directory, f"{MODEL_CONFIG_NAME} is format {config.get('lottalora_format')!r} version "
                         f"{config.get('lottalora_format_version')!r}; this build reads {MODEL_FORMAT!r} version "
                         f"{MODEL_FORMAT_VERSION}")
    kinds = {"architecture": str, "base_config": dict, "dtype": str, "convert_calls": list}
    for key, kind in kinds.items():
        if not isinstance(config.get(key), kind):
            fail(directory, f"{MODEL_CONFIG_NAME} lacks a valid {key!r} ({kind.__name__} expected)")
    if not isinstance(getattr(torch, config["dtype"], None), torch.dtype):
        fail(directory, f"{MODEL_CONFIG_NAME} records dtype {config['dtype']!r}, which is not a torch dtype")
    try:  # the model is built under it, as torch's default dtype, which takes floating dtypes only
        check_floating_dtype(getattr(torch, config["dtype"]), f"{MODEL_CONFIG_NAME}'s dtype")
    except TypeError as exc:
        fail(directory, str(exc))
    for index, call in enumerate(config["convert_calls"]):
        if not (isinstance(call, dict) and isinstance(call.get("module"), str)
                and isinstance(call.get("arguments"), dict) and isinstance(call.get("converted"), list)
                and all(isinstance(name, str) for name in call["converted"])):
            fail(directory, f"{MODEL_CONFIG_NAME} has a malformed convert call {shorten(call)} (module: a string, "
                             "arguments: an object, converted: a list of names expected)")
        # The one argument from_pretrained applies again (each converted layer's dropout); the
        # others are only recorded.
        if "lora_dropout" in call["arguments"]:
            try:
                check_dropout(call["arguments"]["lora_dropout"])
            except ValueError as exc:
                fail(directory, f"{MODEL_CONFIG_NAME} convert_calls[{index}].arguments: {exc}")
    config["base_config"] = _special_floats(config["base_config"])
    return config


# transformers writes the floats JSON has no number for as {"__float__": "Infinity"} (Mamba2's
# time_step_limit holds one) and its from_dict takes them decoded, as its own reader gives them.
_SPECIAL_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _special_floats(value):
    """``value`` with transformers' encoded special floats made floats again, at any depth."""
    if isinstance(value, dict):
        if set(value) == {"__float__"} and value["__float__"] in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value["__float__"]]
        return {k: _special_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_special_floats(v) for v in value]
    return value


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def architecture_class(directory: Path, name: str) -> type:
    """The transformers model class config.json's ``architecture`` names: one transformers
    exports, with a config class of its own (``PreTrainedModel`` has none). Nothing else is built."""
    cls = exported_model_class(name) if isinstance(name, str) else None
    if cls is None:
        import transformers

        fail(directory, f"architecture {shorten(name)} is not a model class of transformers {transformers.__version__} "
                         "(one with a config class, such as LlamaForCausalLM)")
    return cls


def architecture_config(directory: Path, cls: type, base_config: dict, updates: Mapping | None = None):
    """``cls``'s config made from config.json's ``base_config``, with ``updates`` (from_pretrained's
    config_updates) set."""
    try:
        return cls.config_class.from_dict(base_config, **(updates or {}))
    except Exception as exc:  # transformers' checks, run on a file's values: any failure means a bad value
        also = f" with config_updates {sorted(updates)}" if updates else ""
        fail(directory, f"{MODEL_CONFIG_NAME}'s base_config{also} does not make a {cls.config_class.__name__} "
                         f"({_reason(exc)})")


def build_architecture(directory: Path, cls: type, config) -> nn.Module:
    """``cls(config)``, the architecture built from config.json's base_config (a value that
    ``from_dict`` takes can still fail the build: an unknown activation name)."""
    try:
        return cls(config)
    except Exception as exc:  # transformers' code, run on a file's values
        fail(directory, f"{MODEL_CONFIG_NAME}'s base_config does not build a {cls.__name__} ({_reason(exc)})")
