"""What a checkpoint holds, read from its files alone (nothing built): ``describe`` (a report) and
``summary`` (the counts a live model's summary gives, from the same reading, counted the same way).

Both run the checks of ``load`` that need no model, with the same functions: the files, the
config, the tensor file's kind, each layer's fingerprint, and the seeded layers' tensors against
the config's shapes. What only a model can tell is left to ``load``: the model's other tensors
(embeddings, norms, heads: present, absent or extra), and a seeded conv's groups (its lora_B may
have the shape of any groups dividing out_channels and rank)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..model.summary import ModelSummary, build_summary, layer_entry, summarize_model
from ..nn.adapters import DEFAULT_ADAPTER
from ..nn.state import upgrade_legacy_beta
from .files import parse_tensors, read_checkpoint
from .format import ADAPTER_ONLY, CONFIG_NAME, FORMAT_NAME, TRAINABLE_ONLY, fail, shorten, terminal_safe
from .loading import check_fingerprint, check_no_conv_adapters, check_tensor_kind, check_tensors_match, resolve_aliases
from .model_state import state_key


@dataclass(frozen=True)
class CheckpointContents:
    """A checkpoint read once: its validated config, the stored tensors' shapes, each
    seeded layer's beta (NaN where the file holds none), and the bytes on disk."""

    directory: Path
    config: dict
    shapes: dict[str, tuple[int, ...]]
    betas: dict[str, torch.Tensor]
    stored_bytes: int

    @property
    def layers(self) -> list[dict]:
        return self.config["layers"]


def _fits_conv_lora_B(layer: dict, shape: tuple[int, ...]) -> bool:
    """Whether a seeded conv's lora_B may have ``shape``: (out, rank // groups, 1, ...) for a
    groups dividing both out_features and rank. Its groups is not recorded (the weight_shape
    [out, in // groups, *kernel] is the same for every groups), so any such groups will do."""
    out, rank, dims = layer["out_features"], layer["rank"], len(layer["weight_shape"]) - 2
    if len(shape) != dims + 2 or shape[0] != out or any(d != 1 for d in shape[2:]) or shape[1] < 1 or rank % shape[1]:
        return False
    return out % (rank // shape[1]) == 0


def _layer_tensors(config: dict, kind: str) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every tensor the config's seeded layers hold in a file of ``kind``
    (tensor_contents), which a checkpoint read without a model is checked against, as ``load``
    checks it against the model's (save writes these and nothing else under a layer's name). A
    seeded conv's lora_B has the groups = 1 shape here (``_fits_conv_lora_B``)."""
    expected = {}
    for layer in config["layers"]:
        out, rank = layer["out_features"], layer["rank"]
        shapes = {}
        if kind != ADAPTER_ONLY:  # an adapter checkpoint holds the adapter's tensors alone
            shapes["beta"] = (1,)
            if layer["bias"]:
                shapes["bias"] = (out,)
        if layer.get("use_dora", False):
            shapes["lora_magnitude"] = (out,)
        if rank and "weight_shape" in layer:
            kernel = layer["weight_shape"][2:]
            shapes.update(lora_A=(rank, *layer["weight_shape"][1:]), lora_B=(out, rank, *(1,) * len(kernel)))
        elif rank:
            shapes.update(lora_A=(rank, layer["in_features"]), lora_B=(out, rank))
        for name, adapter in layer.get("adapters", {}).items():
            shapes[f"lora_adapters.{name}.lora_A"] = (adapter["rank"], layer["in_features"])
            shapes[f"lora_adapters.{name}.lora_B"] = (out, adapter["rank"])
        expected.update({state_key(layer["name"], key): shape for key, shape in shapes.items()})
    return expected


def _in_seeded_layer(key: str, names: set[str]) -> bool:
    """Whether tensor ``key`` sits under one of the seeded layers ``names`` (a layer named "" is
    the whole model): a model's other tensors (embeddings, norms, heads) are known only to it."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in names for i in range(len(parts)))


def _check_against_config(directory: Path, config: dict, kind: str, tensors: dict[str, torch.Tensor]) -> None:
    """The checks ``load`` runs on the seeded layers' tensors, with the config's shapes standing
    in for the model's: each of those tensors held (every one, but in a trainable-only file),
    none the config does not list under a layer's name, each of the shape and floating dtype
    listed. An adapter checkpoint holds nothing else, as ``load`` requires of it."""
    expected = _layer_tensors(config, kind)
    for layer in config["layers"]:
        key = state_key(layer["name"], "lora_B")
        if "weight_shape" in layer and key in tensors and key in expected:
            shape = tuple(tensors[key].shape)
            if not _fits_conv_lora_B(layer, shape):
                fail(directory, f"tensor {shorten(key)} has shape {shape}, the config has {expected[key]} or another "
                                 "groups' (out_features, rank // groups, 1, ...), for a groups dividing "
                                 f"{layer['out_features']} and {layer['rank']}")
            expected[key] = shape
    if kind != ADAPTER_ONLY:
        names = {layer["name"] for layer in config["layers"]}
        tensors = {k: t for k, t in tensors.items() if _in_seeded_layer(k, names)}
    check_tensors_match(directory, tensors, {k: torch.empty(shape, device="meta") for k, shape in expected.items()},
                        every=kind != TRAINABLE_ONLY, against="the config")


def read_contents(directory: str | os.PathLike) -> CheckpointContents:
    """The checkpoint at ``directory``, validated and read once: the checks of ``load`` that need
    no model (files, config, the tensor file's kind, each layer's fingerprint, the seeded layers'
    tensors against the config: ``_check_against_config``)."""
    directory = Path(directory)
    if not directory.is_dir():
        fail(directory, "no such directory")
    config, data = read_checkpoint(directory)
    kind = check_tensor_kind(directory, config, data)
    for layer in config["layers"]:
        check_fingerprint(directory, layer)
        check_no_conv_adapters(directory, layer)
    stored = parse_tensors(directory, data)
    tensors = dict(stored)
    if kind != ADAPTER_ONLY:  # load reads an adapter checkpoint's tensors under their own names
        resolve_aliases(directory, tensors, config["aliases"])
    for layer in config["layers"]:
        upgrade_legacy_beta(tensors, state_key(layer["name"], "beta"))
    _check_against_config(directory, config, kind, tensors)
    betas = {}
    for layer in config["layers"]:
        key = state_key(layer["name"], "beta")
        betas[layer["name"]] = tensors[key] if key in tensors else torch.tensor([math.nan])
    return CheckpointContents(directory, config, {k: tuple(tensors[k].shape) for k in stored}, betas,
                              (directory / CONFIG_NAME).stat().st_size + len(data))


def _stored_default_values(contents: CheckpointContents, name: str, only: str | None) -> dict[str, int]:
    """{the layer's adapter: lora_A and lora_B values} of a seeded conv (a lora_A of more than two
    dimensions), as the checkpoint stores them under the layer's own keys (a grouped conv's
    lora_B holds out * rank / groups values); {} for a Linear, as the live summary's entry."""
    shapes = [contents.shapes.get(state_key(name, key)) for key in ("lora_A", "lora_B")]
    if any(shape is None for shape in shapes) or len(shapes[0]) <= 2:
        return {}
    return {only or DEFAULT_ADAPTER: sum(math.prod(shape) for shape in shapes)}


def _summarize_checkpoint(contents: CheckpointContents) -> ModelSummary:
    trainable_names = set(contents.config["trainable"])
    only = contents.config.get("adapter")  # an adapter checkpoint: its layers' rank is that adapter's
    layers, backbone_bytes = [], 0
    for entry in contents.layers:
        beta = contents.betas[entry["name"]]
        key = f"{entry['name']}.beta" if entry["name"] else "beta"
        rank, adapters = entry["rank"], {n: a["rank"] for n, a in entry.get("adapters", {}).items()}
        if only is not None and only != DEFAULT_ADAPTER:
            rank, adapters = 0, {only: entry["rank"]}
        layers.append(layer_entry(entry["name"], entry["out_features"], entry["in_features"], rank,
                                  entry["init"], int(entry["seed"]), int(entry["stream"]), entry["spec"].version,
                                  beta.reshape(-1)[0].item(), key in trainable_names, adapters,
                                  _stored_default_values(contents, entry["name"], only)))
        backbone_bytes += entry["out_features"] * entry["in_features"] * beta.element_size()
    values = {k: math.prod(s) for k, s in contents.shapes.items()}
    trainable = sum(n for k, n in values.items() if k in trainable_names)
    frozen = sum(values.values()) - trainable
    return build_summary(trainable, frozen, backbone_bytes, layers, f"checkpoint {contents.directory}")


def summary(source: nn.Module | str | os.PathLike) -> ModelSummary:
    """Counts, backbones and betas of a model, or of a checkpoint directory written by
    ``lottalora.save`` (nothing is built; checked as ``load`` checks it, except for what only a
    model can tell: see the module's docstring).

    The keys are listed on ``ModelSummary``; ``print(summary(model))`` prints PEFT's line of
    trainable parameters, the backbone's size and a table of the seeded layers. A model counts
    ``parameters()`` (tied ones once); a checkpoint counts its stored tensors, so a persistent
    buffer counts there as a frozen parameter, and "trainable" is what required grad when saved.
    Adapters count rank * (in_features + out_features) values per seeded layer in both.
    """
    if isinstance(source, nn.Module):
        return summarize_model(source)
    if isinstance(source, (str, os.PathLike)):
        return _summarize_checkpoint(read_contents(source))
    raise TypeError(f"source must be an nn.Module or a checkpoint directory path, got {type(source).__name__}")


def describe(directory: str | os.PathLike) -> str:
    """What a checkpoint holds: its layers, the bytes stored, and the same model with stored fp16
    weights (its backbones plus every stored tensor at 2 bytes a value, adapters and betas
    excluded). Names read from the files are printed with non-printable characters escaped."""
    contents = read_contents(directory)
    counts = _summarize_checkpoint(contents)
    config = contents.config
    values = {k: math.prod(s) for k, s in contents.shapes.items()}
    adapter_values = sum(n for k, n in values.items() if k.rpartition(".")[2] in ("lora_A", "lora_B"))
    betas = sum(n for k, n in values.items() if k.rpartition(".")[2] == "beta")
    other_values = sum(values.values()) - adapter_values - betas
    stored = contents.stored_bytes
    dense_fp16 = 2 * (counts["backbone_params"] + other_values)
    lines = [f"{terminal_safe(str(contents.directory))}: {FORMAT_NAME} v{config['format_version']}, generator "
             f"philox4x32-{config['generator']['rounds']}"
             + (f", adapter {config['adapter']!r} alone" if "adapter" in config else ""),
             "", "| layer | shape (out x in) | rank | init | stream version | seed | stream |",
             "|---|---|---|---|---|---|---|"]
    for entry in contents.layers:
        name = terminal_safe(entry["name"]).replace("|", "\\|")
        lines.append(f"| {name} | {entry['out_features']} x {entry['in_features']} | {entry['rank']} | "
                     f"{entry['init']} | {entry['spec'].version} | {entry['seed']} | {entry['stream']} |")
    lines += ["", f"seeded layers: {len(contents.layers)}, backbone values regenerated (never stored): "
                  f"{counts['backbone_params']:,}",
              "adapters: " + (", ".join(f"{terminal_safe(name)} ({a['layers']} layers, {a['params']:,} values)"
                                        for name, a in counts["adapters"].items()) or "none"),
              f"stored tensors: {len(contents.shapes)} ({adapter_values:,} adapter values (lora_A, lora_B), "
              f"{betas:,} betas, {other_values:,} other values)",
              f"bytes stored: {stored:,} ({stored / 2**20:.2f} MiB)",
              f"same model with stored fp16 weights: {dense_fp16:,} bytes ({dense_fp16 / 2**20:.2f} MiB), "
              f"{dense_fp16 / stored:.1f}x the checkpoint"]
    return "\n".join(lines)
