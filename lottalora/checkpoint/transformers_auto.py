"""What lottalora registers with transformers' Auto classes, so that
``AutoModelForCausalLM.from_pretrained(directory)`` (and every other ``AutoModel*``) rebuilds a
lottalora directory instead of refusing its ``"model_type": "lottalora"``.

``LottaLoraConfig`` is that model type's config: what ``AutoConfig`` reads from the config.json
``lottalora.save`` writes (the architecture, its config, the convert calls). Each Auto model
class gets a loader whose ``from_pretrained`` calls ``lottalora.from_pretrained``, after checking
that the saved architecture is one that Auto class builds (``AutoModel`` on a saved
``LlamaForCausalLM`` is refused by name: it would build a ``LlamaModel``).

This module imports transformers; ``transformers_hook`` imports it only once transformers' Auto
modules are imported, so ``import lottalora`` never imports transformers.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import PreTrainedConfig

from ..model.placement import check_device
from .format import CONFIG_NAME, fail
from .model_config import MODEL_TYPE, architecture_class, architecture_config, exported_model_class, read_model_config
from .pretrained import IMPLEMENTATION_OPTIONS, from_pretrained

# from_pretrained arguments that locate the files on the Hub (passed to snapshot_download for a
# repository id) or that transformers' Auto classes add on their own, and that change nothing
# here once the directory is found.
_HUB_ARGUMENTS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "token")
# weights_only and disable_mmap: the directory's tensors are safetensors, read whole and never unpickled.
_IGNORED = ("_from_auto", "_from_pipeline", "_commit_hash", "adapter_kwargs", "trust_remote_code", "code_revision",
            "low_cpu_mem_usage", "user_agent", "weights_only", "disable_mmap")
# device_map values that let accelerate choose: a seed-only model is small, it goes on one device.
_AUTO_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# What a LottaLoraConfig holds about the checkpoint itself, not options of the model it builds.
_CHECKPOINT_KEYS = ("architecture", "base_config", "convert_calls", "lottalora_format", "lottalora_format_version",
                    "note", "model_type", "transformers_version", "architectures", "name_or_path", "commit_hash",
                    "post_init_done", "dtype")


# PreTrainedConfig's own fields that describe the architecture, not the checkpoint: a
# LottaLoraConfig takes them from base_config (else AutoConfig would report their defaults).
_ARCHITECTURE_FIELDS = ("is_encoder_decoder", "id2label", "label2id", "problem_type", "chunk_size_feed_forward")


class LottaLoraConfig(PreTrainedConfig):
    """The config of a lottalora directory as ``AutoConfig`` reads it: ``architecture`` (the
    transformers class), ``base_config`` (its config, a dict), ``convert_calls``. It describes a
    checkpoint, not a model to build from scratch (``from_config`` is refused). The
    architecture's fields read as the architecture's config gives them (``num_labels``,
    ``id2label``, ``is_encoder_decoder``, ``vocab_size``, ``hidden_size``, ...); setting one
    asks from_pretrained for that change (``config=``)."""

    model_type = MODEL_TYPE

    def __post_init__(self, **kwargs):
        base = kwargs.get("base_config")
        if isinstance(base, dict):
            for name in _ARCHITECTURE_FIELDS:
                if name in base and getattr(self, name, None) == getattr(type(self), name, None):  # not given
                    setattr(self, name, base[name])
        super().__post_init__(**kwargs)

    def __getattr__(self, name: str):
        # Only for names the config does not hold itself: the architecture's other fields, read
        # from its own config class (attribute_map aliases such as GPT-2's hidden_size, sub-configs
        # as configs). Built per read, not kept: a kept config would be serialized with this one.
        base = self.__dict__.get("base_config")
        if name.startswith("_") or not isinstance(base, dict):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        architecture = exported_model_class(str(self.__dict__.get("architecture")))
        if architecture is not None:
            try:
                return getattr(architecture.config_class.from_dict(base), name)
            except Exception:  # not an attribute there, or a base_config its class refuses (from_pretrained names it)
                pass
        if name in base:
            return base[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


def _dtype(value):
    """transformers' dtype argument (a torch.dtype, its name or "auto") as a torch.dtype, or None
    for the saved one; from_pretrained checks that it is a floating one."""
    if value is None or value == "auto":
        return None
    if isinstance(value, str):
        resolved = getattr(torch, value, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype={value!r} is not a torch dtype")
        return resolved
    if isinstance(value, torch.dtype):
        return value
    raise TypeError(f"dtype must be a torch.dtype, its name or 'auto', got {value!r}")


def _device(device_map) -> torch.device:
    """The one device a device_map puts the model on."""
    if device_map is None:
        return torch.device("cpu")
    if isinstance(device_map, str) and device_map in _AUTO_DEVICE_MAPS:
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if isinstance(device_map, dict):
        devices = {check_device(f"cuda:{d}" if isinstance(d, int) else d, "device_map")
                   for d in device_map.values()}
        if len(devices) != 1:
            raise ValueError(f"device_map={device_map!r} spreads the model over several devices: a lottalora model "
                             "is loaded onto one device (seed-only models are small); give one device")
        return devices.pop()
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        return check_device(f"cuda:{device_map}", "device_map")
    if isinstance(device_map, (str, torch.device)):
        return check_device(device_map, "device_map")
    raise TypeError(f"device_map must be a device, a device name, 'auto' or a dict, got {device_map!r}")


def _public(name: str) -> str:
    """A config attribute's public name (transformers keeps some as ``_name`` or ``_name_internal``)."""
    return name.removeprefix("_").removesuffix("_internal")


def _config_updates(directory: Path, config, kwargs: dict) -> dict:
    """What the caller asks to change in the architecture's config, as transformers'
    from_pretrained takes it: the options the Auto class's ``AutoConfig`` absorbed into
    ``config`` (``attn_implementation``, ``output_hidden_states``, ...), read as differences from
    the directory's own config, and the keyword arguments that are attributes of the
    architecture's config (``use_cache``, ``pad_token_id``, ...), which are taken out of
    ``kwargs``. Options that change the architecture's shapes then fail the load by name."""
    updates = {}
    if config is not None:
        if not isinstance(config, LottaLoraConfig):
            raise TypeError(f"config must be the LottaLoraConfig that AutoConfig reads from a lottalora directory, "
                            f"got {type(config).__name__}")
        saved = LottaLoraConfig.from_pretrained(directory)
        if (config.architecture, config.convert_calls) != (saved.architecture, saved.convert_calls):
            raise ValueError(f"config= describes another checkpoint ({config.architecture}) than {directory}")
        for name in {_public(k) for k in vars(config)} - set(_CHECKPOINT_KEYS) - set(IMPLEMENTATION_OPTIONS):
            if getattr(config, name, None) != getattr(saved, name, None):
                updates[name] = getattr(config, name)
        for name in IMPLEMENTATION_OPTIONS:  # read through transformers' private properties (_attn_implementation)
            if getattr(config, f"_{name}", None) != getattr(saved, f"_{name}", None):
                updates[name] = getattr(config, f"_{name}")
        held = saved.base_config
        updates.update({k: v for k, v in config.base_config.items() if held.get(k) != v})
    model_config = read_model_config(directory)
    base = architecture_config(directory, architecture_class(directory, model_config["architecture"]),
                               model_config["base_config"])
    for key in [k for k in kwargs if hasattr(base, k)]:
        updates[key] = kwargs.pop(key)
    return updates


def _directory(path, subfolder: str, hub: dict) -> Path:
    """The local directory of ``path``: itself, or a Hub repository's snapshot."""
    local = Path(path) / subfolder
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    snapshot = snapshot_download(str(path), **{k: v for k, v in hub.items() if k != "force_download"},
                                 force_download=hub.get("force_download", False))
    return Path(snapshot) / subfolder


class SeededCheckpointLoader:
    """The model class registered for ``LottaLoraConfig`` with one Auto class: its
    ``from_pretrained`` rebuilds the directory with ``lottalora.from_pretrained``."""

    config_class = LottaLoraConfig
    auto_class: type | None = None  # the Auto class it is registered with
    auto_class_name: str = ""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, config=None, **kwargs):
        """The converted model of the lottalora directory (or Hub repository) at
        ``pretrained_model_name_or_path``. Takes ``dtype`` / ``torch_dtype`` (default: the saved
        dtype), ``device_map`` (one device; "auto" is the first GPU, else the CPU),
        ``is_trainable`` (default True here, as transformers returns models to train: the
        parameters that trained when saved require grad; False freezes all),
        ``output_loading_info``, ``subfolder``, the Hub arguments, and options of the
        architecture's config as transformers takes them (``attn_implementation``,
        ``output_hidden_states``, ``use_cache``, ...: given directly or absorbed by the Auto class
        into ``config``, they are set on the config before the model is built). Anything else
        transformers' from_pretrained takes (quantization, offloading, ...) is refused by name."""
        if model_args:
            raise TypeError(f"{cls.auto_class_name}.from_pretrained of a lottalora directory takes no positional model "
                            f"arguments, got {len(model_args)}")
        hub = {k: kwargs.pop(k) for k in _HUB_ARGUMENTS if k in kwargs}
        subfolder = kwargs.pop("subfolder", "") or ""
        for key in _IGNORED:
            kwargs.pop(key, None)
        if kwargs.pop("use_safetensors", None) is False:
            raise ValueError("use_safetensors=False: a lottalora directory holds its tensors as safetensors only")
        dtype = _dtype(kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None))
        kwargs.pop("torch_dtype", None)
        device_map = kwargs.pop("device_map", None)
        device = _device(device_map)
        is_trainable = kwargs.pop("is_trainable", True)
        attn_implementation = kwargs.pop("attn_implementation", None)
        output_loading_info = kwargs.pop("output_loading_info", False)
        directory = _directory(pretrained_model_name_or_path, subfolder, hub)
        _check_architecture(directory, cls.auto_class, cls.auto_class_name)
        updates = _config_updates(directory, config, kwargs)
        if kwargs:
            raise ValueError(f"{cls.auto_class_name}.from_pretrained of a lottalora directory does not take "
                             f"{sorted(kwargs)}: lottalora rebuilds the model from seeds and adapters")
        if attn_implementation is not None:
            updates["attn_implementation"] = attn_implementation
        model = from_pretrained(directory, device=device, dtype=dtype, is_trainable=is_trainable,
                                config_updates=updates)
        if device_map is not None:
            model.hf_device_map = {"": device.index if device.type == "cuda" else device.type}
        model.name_or_path = model.config._name_or_path = str(pretrained_model_name_or_path)
        if output_loading_info:  # lottalora's load is exact: every tensor or an error
            return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model

    @classmethod
    def _from_config(cls, config, **kwargs):
        raise ValueError(f"{cls.auto_class_name}.from_config: a lottalora config describes a saved checkpoint, not a "
                         "model to initialise: load the directory with from_pretrained, or build the architecture "
                         "from its config and lottalora.convert it")

    from_config = _from_config


def _check_architecture(directory: Path, auto: type, auto_class_name: str) -> None:
    """ValueError unless the saved architecture is one the Auto class ``auto`` builds for its config."""
    if not (directory / CONFIG_NAME).is_file():
        fail(directory, f"has no {CONFIG_NAME}: not a lottalora directory")
    architecture = read_model_config(directory)["architecture"]
    cls = architecture_class(directory, architecture)
    built = auto._model_mapping.get(cls.config_class, None)
    built = tuple(built) if isinstance(built, (list, tuple)) else (built,)
    if cls not in built:
        names = [b.__name__ for b in built if b is not None]
        fail(directory, f"holds a {architecture}; {auto_class_name} builds {names or 'no model'} for its config: load "
                         "it with the Auto class of that architecture or lottalora.from_pretrained(directory)")


def register_config(configuration_auto) -> None:
    """Register ``LottaLoraConfig`` for model type "lottalora" (``transformers.models.auto.configuration_auto``)."""
    configuration_auto.AutoConfig.register(MODEL_TYPE, LottaLoraConfig, exist_ok=True)


def register_models(modeling_auto) -> None:
    """Register a ``SeededCheckpointLoader`` with every Auto model class of
    ``transformers.models.auto.modeling_auto``."""
    # An Auto model class is one with a model mapping (what its register adds to, and what
    # _check_architecture reads: transformers has no public accessor for it).
    for name, auto in list(vars(modeling_auto).items()):
        if isinstance(auto, type) and name.startswith("Auto") and callable(getattr(auto, "register", None)) and \
                getattr(auto, "_model_mapping", None) is not None:
            loader = globals().get(f"LottaLora{name}")
            if loader is None:  # module-level, so the class pickles by name
                loader = type(f"LottaLora{name}", (SeededCheckpointLoader,),
                              {"auto_class": auto, "auto_class_name": name, "__module__": __name__})
                globals()[loader.__name__] = loader
            auto.register(LottaLoraConfig, loader, exist_ok=True)
