"""A converted transformers model's ``save_pretrained``: a lottalora directory, with what
transformers' own tools look for beside it.

``convert`` gives a transformers model a class whose ``save_pretrained`` is this function
(``lottalora.model.pretrained_class``); ``push_to_hub``, ``Trainer.save_model`` and the
Trainer's checkpoints save through it. It writes what ``lottalora.save`` writes (seeds +
adapters, the config.json that names the architecture and says ``"model_type": "lottalora"``),
and for transformers' Trainer, which resumes and loads its best model from a safetensors index:
``model.safetensors.index.json`` naming ``adapters.safetensors`` and ``seeded_layers.safetensors``
(every seeded layer's "_extra_state", so a resumed model takes the checkpoint's seeds, ranks and
alphas, as ``lottalora.load`` does, and an empty "weight" under each seeded layer: the dense guard
of ``lottalora.nn.dense_guard``, which makes a dense class's ``from_pretrained`` of the directory,
``LlamaForCausalLM.from_pretrained`` where the Auto classes know lottalora, refuse to load with a
size mismatch instead of filling the backbone with random weights), plus
``generation_config.json`` for a model that generates.

A given ``state_dict`` (what the Trainer passes under FSDP's full state dict or DeepSpeed, and
for a model it holds inside a torch.compile wrapper) supplies the tensors, checked against the
model's own names, shapes and dtypes; the seeds and options are the model's layers'.
transformers' arguments that would write something else are refused by name: a
``safe_serialization=False`` (pickles), a ``variant``, a ``distributed_checkpoint``, or a
``max_shard_size`` below the tensors' size (a lottalora directory has one tensor file; under the
limit, that file is the one shard).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..model.pretrained_class import SeededPreTrainedModel
from ..nn import dense_guard, is_dtensor, seeded_layers, unwrap_model
from .files import replaced_atomically
from .format import FORMAT_NAME, LAYER_STATES_NAME, SAFE_INDEX_NAME, TENSORS_NAME
from .model_state import state_tensors
from .saving import save, save_given_state

# transformers' weight files that a previous save_pretrained of the model may have left in the
# directory: the Trainer would load them before the index (model.safetensors first).
_STALE_WEIGHTS = re.compile(
    r"(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)|pytorch_model\.bin\.index\.json")
# Arguments of transformers' save_pretrained that change nothing a lottalora directory holds.
_NO_EFFECT = ("save_peft_format", "save_original_format")


def _tensor_bytes(model) -> int:
    """What the stored tensors take (tied tensors once), as transformers' sharding counts them."""
    seen, total = set(), 0
    for t in state_tensors(model).values():
        key = (t.device, t.data_ptr()) if not is_dtensor(t) and t.numel() else id(t)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _check_arguments(model, max_shard_size, variant, safe_serialization, distributed_checkpoint,
                     kwargs: dict) -> None:
    if safe_serialization is False:
        raise ValueError("save_pretrained(safe_serialization=False) is refused: a lottalora directory is always "
                         "safetensors and JSON, nothing is pickled")
    if variant is not None:
        raise ValueError(f"save_pretrained(variant={variant!r}) is refused: a lottalora directory has fixed file names")
    if distributed_checkpoint:
        raise ValueError("save_pretrained(distributed_checkpoint=True) is refused: call lottalora.save on every rank, "
                         "which gathers the shards and writes one directory")
    unknown = sorted(set(kwargs) - set(_NO_EFFECT))
    if unknown:
        raise TypeError(f"save_pretrained() of a converted model got unexpected arguments {unknown}")
    if max_shard_size is not None:
        from transformers.utils.hub import convert_file_size_to_int

        limit, size = convert_file_size_to_int(max_shard_size), _tensor_bytes(model)
        if size > limit:
            raise ValueError(f"max_shard_size={max_shard_size!r} is refused: the model's tensors take {size:,} bytes "
                             f"and a lottalora directory stores them in one file ({TENSORS_NAME}); give a "
                             "max_shard_size of at least that")


def _write_trainer_files(model, directory: Path) -> None:
    """The index and the layer states transformers' Trainer loads a checkpoint directory from."""
    from safetensors import safe_open
    from safetensors.torch import save as serialize

    root = unwrap_model(model)
    states = {}
    for name, layer in seeded_layers(root, plain=True).items():
        prefix = f"{name}." if name else ""
        states[prefix + "_extra_state"] = layer.get_extra_state()
        states[prefix + dense_guard.ENTRY] = dense_guard.dense_guard()
        for adapter_name, adapter in layer.named_adapters.items():
            states[f"{prefix}lora_adapters.{adapter_name}._extra_state"] = adapter.get_extra_state()
    data = serialize(states, metadata={"format": FORMAT_NAME})
    with replaced_atomically(directory / LAYER_STATES_NAME) as tmp:
        tmp.write_bytes(data)
    with safe_open(directory / TENSORS_NAME, framework="pt") as f:  # the header only
        stored = list(f.keys())
    weight_map = {**{k: TENSORS_NAME for k in stored}, **{k: LAYER_STATES_NAME for k in states}}
    total = _tensor_bytes(root) + sum(t.numel() * t.element_size() for t in states.values())
    index = {"metadata": {"format": FORMAT_NAME, "total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with replaced_atomically(directory / SAFE_INDEX_NAME) as tmp:
        tmp.write_text(json.dumps(index, indent=2) + "\n")


def save_pretrained(model, save_directory: str | os.PathLike, is_main_process: bool = True, state_dict=None,
                    push_to_hub: bool = False, max_shard_size: int | str | None = "50GB", variant: str | None = None,
                    token=None, safe_serialization: bool = True, distributed_checkpoint: bool = False,
                    **kwargs) -> None:
    """transformers' ``save_pretrained`` for a converted model: writes ``save_directory`` as a
    lottalora directory (``lottalora.save``) plus the files transformers' Trainer and
    ``from_pretrained`` read (the module docstring). ``is_main_process=False`` writes nothing
    (other ranks return at once; a model with sharded DTensor parameters saves on every rank,
    as ``lottalora.save`` gathers them, unless a ``state_dict`` of whole tensors is given, which
    the main process alone writes: ``lottalora.checkpoint.saving.save_given_state``).
    ``push_to_hub=True`` then uploads the model with ``push_to_hub`` (``repo_id``,
    ``commit_message``, ``private``, ``create_pr`` are passed on; ``token`` too). Weight files
    transformers left in the directory from an earlier save of the model (``model.safetensors``,
    ``pytorch_model.bin``, their shards) are removed, so that nothing there outranks the seeds."""
    hub = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "private", "create_pr") if k in kwargs}
    _check_arguments(model, max_shard_size, variant, safe_serialization, distributed_checkpoint, kwargs)
    # A sharded model's own tensors are gathered by every rank; a given state dict is whole on the writer.
    collective = state_dict is None and any(is_dtensor(p) for p in model.parameters())
    if not is_main_process and not collective:
        return
    directory = Path(save_directory)
    if directory.is_file():
        raise ValueError(f"save_pretrained: {directory} is a file, not a directory")
    if state_dict is None:
        save(model, directory)
    else:
        save_given_state(model, directory, state_dict)
    if not is_main_process:
        return
    for entry in directory.iterdir():
        if entry.is_file() and _STALE_WEIGHTS.fullmatch(entry.name):
            entry.unlink()
    _write_trainer_files(model, directory)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(directory)
    if push_to_hub:
        repo_id = hub.pop("repo_id", directory.name)
        model.push_to_hub(repo_id, token=token, max_shard_size=max_shard_size, **hub)


def install_save_pretrained() -> None:
    """Make ``save_pretrained`` the writer of converted models' ``save_pretrained``."""
    SeededPreTrainedModel.directory_writer = save_pretrained


