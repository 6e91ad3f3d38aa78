"""What a checkpoint holds, read from its files alone (validated as ``load`` validates them,
nothing built): ``describe`` (a report) and ``summary`` (the counts a live model's summary gives,
from the same reading, counted the same way)."""

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
from .format import CONFIG_NAME, FORMAT_NAME, fail, terminal_safe
from .loading import check_tensors_match


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


def _layer_tensors(config: dict) -> dict[str, torch.Tensor]:
    """{name: a meta tensor of the shape the config implies} for the seeded layers' own tensors,
    which a checkpoint read without a model (no model's tensors to check them against, as
    ``load`` does) is checked against: a beta read here must be one floating value."""
    expected = {}
    for layer in config["layers"]:
        prefix, out, rank = f"{layer['name']}." if layer["name"] else "", layer["out_features"], layer["rank"]
        shapes = {"beta": (1,), "bias": (out,), "lora_magnitude": (out,)}
        if "weight_shape" in layer:
            # A seeded conv's lora_B is (out, rank // groups, 1, ...), and its groups are not
            # recorded: only its lora_A's shape follows from the config.
            shapes["lora_A"] = (rank, *layer["weight_shape"][1:])
        else:
            shapes.update(lora_A=(rank, layer["in_features"]), lora_B=(out, rank))
        for name, adapter in layer.get("adapters", {}).items():
            shapes[f"lora_adapters.{name}.lora_A"] = (adapter["rank"], layer["in_features"])
            shapes[f"lora_adapters.{name}.lora_B"] = (out, adapter["rank"])
        expected.update({prefix + key: torch.empty(shape, device="meta") for key, shape in shapes.items()})
    return expected


def read_contents(directory: str | os.PathLike) -> CheckpointContents:
    """The checkpoint at ``directory``, validated and read once."""
    directory = Path(directory)
    if not directory.is_dir():
        fail(directory, "no such directory")
    config, data = read_checkpoint(directory)
    tensors = parse_tensors(directory, data)
    expected = _layer_tensors(config)
    for key in expected:
        if key.rpartition(".")[2] == "beta":
            upgrade_legacy_beta(tensors, key)
    check_tensors_match(directory, {k: t for k, t in tensors.items() if k in expected}, expected, every=False,
                        against="the config")
    betas = {}
    for layer in config["layers"]:
        key = f"{layer['name']}.beta" if layer["name"] else "beta"
        betas[layer["name"]] = tensors[key] if key in tensors else torch.tensor([math.nan])
    return CheckpointContents(directory, config, {k: tuple(t.shape) for k, t in tensors.items()}, betas,
                              (directory / CONFIG_NAME).stat().st_size + len(data))


def _stored_default_values(contents: CheckpointContents, name: str, only: str | None) -> dict[str, int]:
    """{the layer's adapter: lora_A and lora_B values} of a seeded conv (a lora_A of more than two
    dimensions), as the checkpoint stores them under the layer's own keys (a grouped conv's
    lora_B holds out * rank / groups values); {} for a Linear, as the live summary's entry."""
    prefix = f"{name}." if name else ""
    shapes = [contents.shapes.get(prefix + key) for key in ("lora_A", "lora_B")]
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
    ``lottalora.save`` (validated as ``load`` does; nothing is built).

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
