"""``lottalora.save``: a model written as seeds + tensors, never its backbone weights."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from lottalora_kernels.stream import spec

from ..backbone import backbone_fingerprint
from ..distributed.state import barrier, gather_full
from ..model.modules import check_not_peft
from ..nn import is_dtensor, plain_name, seeded_layers, unwrap_model
from ..nn.adapters import DEFAULT_ADAPTER, check_adapter_name
from ..nn.options import check_alpha
from .config_json import config_checksum
from .files import replaced_atomically
from .format import (
    ADAPTER_ONLY,
    CONFIG_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    LAYER_STATES_NAME,
    MODEL_CONFIG_NAME,
    SAFE_INDEX_NAME,
    TENSORS_NAME,
    TRAINABLE_ONLY,
)
from .model_config import model_config_for_save
from .model_state import conv_weight_shape, given_state_tensors, state_tensors, trainable_names


def _remove_stale_trainer_files(directory: Path) -> None:
    """Remove the index and layer states an earlier ``save_pretrained`` of a converted model wrote
    for transformers' Trainer (an index with lottalora's format tag, and the layer states it names
    or that carry the tag): they would name the earlier seeds beside the new tensors. Files of
    another writer (a dense model's own weights and index) are left alone; ``save_pretrained``
    writes its files again after this save."""
    from safetensors import safe_open

    index, states = directory / SAFE_INDEX_NAME, directory / LAYER_STATES_NAME
    ours = False
    if index.is_file():
        try:
            ours = json.loads(index.read_text()).get("metadata", {}).get("format") == FORMAT_NAME
        except (OSError, ValueError, AttributeError):  # unreadable or not an index: not ours to judge
            ours = False
        if ours:
            index.unlink()
    if states.is_file() and not ours:
        try:
            with safe_open(states, framework="pt") as f:
                ours = (f.metadata() or {}).get("format") == FORMAT_NAME
        except Exception:  # noqa: BLE001 - safetensors' own error class: a file it cannot read is not known ours
            ours = False
    if states.is_file() and ours:
        states.unlink()


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
        if is_dtensor(t) or hasattr(t, "ds_shape"):  # sharded: no memory to compare, one object per tensor
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


def _layer_entry(name: str, m) -> dict:
    entry = {"name": name, "in_features": m.in_features, "out_features": m.out_features, "seed": str(m.seed),
             "stream": str(m.stream), "stream_version": m.stream_version, "init": m.init, "rank": m.rank,
             "alpha": m.alpha, "use_rslora": m.use_rslora, "scaling": m.scaling, "bias": m.bias is not None,
             "fingerprint": backbone_fingerprint(m.spec)}
    if m.use_dora:
        entry["use_dora"] = True
    shape = conv_weight_shape(m)
    if shape is not None:
        entry["weight_shape"] = shape
    if m.named_adapters:
        entry["adapters"] = {n: {"rank": a.rank, "alpha": a.alpha, "use_rslora": a.use_rslora, "scaling": a.scaling,
                                 "lora_dropout": a.lora_dropout} for n, a in m.named_adapters.items()}
    return entry


def _adapter_layer_entry(name: str, m, adapter: str) -> dict:
    """A layer entry of an adapter checkpoint: the layer's backbone, the adapter's rank and alpha."""
    entry = _layer_entry(name, m)
    entry.pop("adapters", None)
    if adapter != DEFAULT_ADAPTER:
        entry.pop("use_dora", None)  # named adapters are plain LoRA
        a = m.named_adapters[adapter]
        entry.update(rank=a.rank, alpha=a.alpha, use_rslora=a.use_rslora, scaling=a.scaling)
    entry["lora_dropout"] = m.lora_dropout if adapter == DEFAULT_ADAPTER else m.named_adapters[adapter].lora_dropout
    return entry


def _adapter_tensors(layers: dict, adapter: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """{<layer>.lora_A / .lora_B (and .lora_magnitude for a DoRA default adapter): the adapter's
    tensors} (the default adapter's keys, whatever its name), and the layers that hold it."""
    tensors, holders = {}, []
    for name, m in layers.items():
        if adapter in m.adapter_names():
            prefix = f"{name}." if name else ""
            parts = m.adapter_parts(adapter)
            tensors[prefix + "lora_A"], tensors[prefix + "lora_B"] = parts.lora_A, parts.lora_B
            if adapter == DEFAULT_ADAPTER and m.use_dora:
                tensors[prefix + "lora_magnitude"] = m.lora_magnitude
            holders.append(name)
    return tensors, holders


def save(model: nn.Module, directory: str | os.PathLike, *, trainable_only: bool = False,
         adapter: str | None = None) -> Path:
    """Write ``model`` as seeds + tensors to ``directory`` (created if needed). Returns the path.

    The model must contain at least one ``lottalora.Linear``; every tensor of its state_dict is
    stored (the seeded backbones are not in it), so a model of the same architecture restores
    identical outputs with ``load``. Writes format version ``FORMAT_VERSION``.
    ``trainable_only=True`` stores only the parameters that require grad (adapters, betas,
    trained biases, ``trainable_modules``), as PEFT saves an adapter: ``load`` then restores
    those into a model that has the rest (the same base model, converted the same way). Named
    adapters (``add_adapter``) are saved with their layers.

    ``adapter=name`` writes one adapter alone (PEFT's ``selected_adapters``): each layer that
    holds it, with its backbone identity and the adapter's rank, alpha, rsLoRA and dropout, and
    its lora_A and lora_B under the layer's default keys (``<layer>.lora_A``), so the file loads
    under any name: ``load(model, directory, adapter=...)`` puts it into a model of the same
    backbones, adding the adapter where the model lacks it.

    ``model`` may be wrapped by ``torch.compile`` or ``DistributedDataParallel``: the plain
    names are written. With FSDP2 (``fully_shard``) or tensor-parallel parameters (DTensors),
    every rank must call ``save`` (the shards are gathered, one tensor at a time); rank 0 writes
    and every rank returns once the files are complete. Transformers models also get a
    ``config.json`` from which ``lottalora.from_pretrained`` rebuilds them (``model_config``).
    Each file is replaced in one step, so a reader never sees half of one. The Trainer's index
    and ``seeded_layers.safetensors`` that an earlier ``save_pretrained`` of a converted model
    left in ``directory`` are removed: they would name the earlier seeds. Other files (a dense
    model's own weights) are left as they are.
    """
    if not isinstance(trainable_only, bool):
        raise TypeError(f"trainable_only must be a bool, got {trainable_only!r}")
    if adapter is not None and trainable_only:
        raise ValueError("adapter= and trainable_only=True are two kinds of partial checkpoint: give one")
    model = unwrap_model(model)
    layers = _saved_layers(model)
    directory = Path(directory)
    trainable = trainable_names(model)
    if adapter is not None:
        check_adapter_name(adapter)
        state, holders = _adapter_tensors(layers, adapter)
        if not holders:
            known = sorted({n for m in layers.values() for n in m.adapter_names()})
            raise ValueError(f"adapter={adapter!r}: no seeded layer of the model holds it (adapters: {known})")
        entries = [_adapter_layer_entry(name, layers[name], adapter) for name in holders]
        trainable = [k for k in sorted(state) if state[k].requires_grad]
    else:
        state = state_tensors(model)
        if trainable_only:
            state = {k: v for k, v in state.items() if k in set(trainable)}
            if not state:
                raise ValueError("trainable_only=True but no parameter of the model requires grad: nothing to save")
        entries = [_layer_entry(name, m) for name, m in layers.items()]
    unique, aliases = _split_aliases(state, _parameter_ids(model))
    # On every rank, before the gather: a refusal here (an untied model its architecture ties)
    # reaches every rank, where the writer's alone would leave the others at the barrier.
    model_config = model_config_for_save(model) if adapter is None else None
    sharded = any(is_dtensor(t) for t in unique.values())
    if sharded:
        unique = gather_full(unique)  # a collective: every rank is here
        if unique is None:  # not the writer
            barrier()
            return directory
    contents = ADAPTER_ONLY if adapter is not None else TRAINABLE_ONLY if trainable_only else None
    _write(directory, layers, entries, unique, aliases, trainable, contents, adapter, model_config)
    if sharded:
        barrier()
    return directory


def save_given_state(model: nn.Module, directory: str | os.PathLike, state_dict: Mapping) -> Path:
    """``save`` of the whole ``model`` with the tensors of ``state_dict`` in place of the model's
    own: the writer of ``save_pretrained(state_dict=...)``, whose caller took a state dict of the
    model elsewhere and holds it whole on this rank alone (the Trainer under FSDP's full state
    dict or DeepSpeed, a compiled model's Trainer), so nothing is gathered and no other rank
    takes part. The layers' seeds and options are the model's; ``state_dict`` must hold every
    tensor the model's own would, whole, of the same shapes and dtypes (``given_state_tensors``);
    tied names are stored once, as ``save`` stores them. Returns the path."""
    model = unwrap_model(model)
    layers = _saved_layers(model)
    given = given_state_tensors(model, state_dict)
    # With the parameters (not detached copies): ZeRO-3's empty placeholders are told apart by identity.
    _, aliases = _split_aliases(state_tensors(model, keep_vars=True), _parameter_ids(model))
    for alias, stored in aliases.items():
        if not torch.equal(given[alias], given[stored]):
            raise ValueError(f"save_pretrained(state_dict=...): {alias!r} and {stored!r} are one tensor in the model "
                             "(tied) but differ in the state dict")
    unique = {k: v for k, v in given.items() if k not in aliases}
    entries = [_layer_entry(name, m) for name, m in layers.items()]
    directory = Path(directory)
    _write(directory, layers, entries, unique, aliases, trainable_names(model), None, None,
           model_config_for_save(model))
    return directory


def _saved_layers(model: nn.Module) -> dict:
    """{plain name: seeded layer} of a model about to be saved, refused if it has none or an alpha
    no checkpoint can hold."""
    # PEFT's layers' state_dict names are its own (base_layer, lora_A.default): the directory
    # would save, then fail every load of the architecture it records.
    check_not_peft(model, "save the converted model without PEFT's layers (merge_and_unload() merges PEFT's "
                          "adapters into it), or save PEFT's adapters with PEFT's own save_pretrained")
    layers = seeded_layers(model, plain=True)
    if not layers:
        raise ValueError("model has no lottalora.Linear layer: convert it first (lottalora.convert)")
    for name, m in layers.items():
        try:
            check_alpha(m.alpha, zero_ok=m.rank == 0)
        except ValueError as exc:
            raise ValueError(f"layer {name!r}: {exc}") from None
    return layers


def _write(directory: Path, layers: dict, entries: list[dict], unique: dict[str, torch.Tensor],
           aliases: dict[str, str], trainable: list[str], contents: str | None, adapter: str | None,
           model_config: dict | None) -> None:
    """Write the directory's files from whole tensors (this rank is the writer); ``model_config``
    is ``model_config_for_save``'s, or None for a model that gets no config.json."""
    from safetensors.torch import save as serialize

    metadata = {"format": FORMAT_NAME, **({"contents": contents} if contents else {})}
    data = serialize({k: v.detach().contiguous().cpu() for k, v in unique.items()}, metadata=metadata)
    directory.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(directory / TENSORS_NAME) as tmp:
        tmp.write_bytes(data)
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        # The newest stream version in use: a reader that knows only older versions refuses the file.
        "generator": {"name": "philox4x32", "rounds": spec.PHILOX_ROUNDS,
                      "stream_version": max(layers[e["name"]].stream_version for e in entries)},
        "layers": entries,
        "trainable": trainable,
        "aliases": aliases,
        "tensors": {"file": TENSORS_NAME, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
        **({"adapter": adapter} if adapter is not None else {}),
    }
    config["config_sha256"] = config_checksum(config)
    config_path = directory / CONFIG_NAME
    with replaced_atomically(config_path) as tmp:
        tmp.write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")
    # The tensors get the config's permissions (the umask's).
    os.chmod(directory / TENSORS_NAME, stat.S_IMODE(config_path.stat().st_mode))
    if model_config is not None:
        with replaced_atomically(directory / MODEL_CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(model_config, indent=2) + "\n")
    _remove_stale_trainer_files(directory)
