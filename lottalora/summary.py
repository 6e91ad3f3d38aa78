"""What a seeded model is: trainable, adapter and frozen parameters, the backbones it regenerates
instead of storing, and its betas, for a live model or a checkpoint directory alike.

``model.parameters()`` no longer counts the backbones once a model is converted (a converted
LLaMA reports a tenth of its architecture's size), so the summary shows them beside PEFT's
familiar line: ``trainable params: ... || all params: ... || trainable%: ...``, where "all"
counts the backbones as the dense weights they replace.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from lottalora_kernels.stream_spec import STREAM_VERSION

from .distributed.state import is_dtensor
from .linear import Linear


class ModelSummary(Mapping):
    """A read-only mapping of counts; ``str()`` is a report with one table row per seeded layer.

    Keys: ``trainable_params`` (values that require grad), ``adapter_params`` (lora_A and
    lora_B values), ``frozen_params`` (stored values that do not train), ``stored_params``
    (trainable + frozen: what ``parameters()`` counts), ``backbone_params`` (W_seed values,
    regenerated from seeds and never stored), ``backbone_bytes`` (what the backbones would take
    stored in their layers' dtype), ``total_params`` (stored + backbone: the architecture's
    size with adapters and betas), ``trainable_fraction`` (trainable / total),
    ``seeded_layers`` (count), ``betas`` ({layer name: beta}), ``layers`` (one dict per seeded
    layer: name, out_features, in_features, rank, init, seed, stream, stream_version, beta,
    train_beta).
    """

    def __init__(self, values: dict, source: str) -> None:
        self._values = values
        self.source = source

    def __getitem__(self, key: str):
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        counts = {k: v for k, v in self._values.items() if k not in ("betas", "layers")}
        return f"ModelSummary({self.source}: {counts})"

    def __str__(self) -> str:
        v = self._values
        lines = [
            f"trainable params: {v['trainable_params']:,} || all params: {v['total_params']:,} || "
            f"trainable%: {100 * v['trainable_fraction']:.4f}",
            f"backbone: {v['backbone_params']:,} values in {v['seeded_layers']} seeded layers, regenerated from "
            f"seeds and never stored (stored, they would take {_mib(v['backbone_bytes'])})",
            f"stored params: {v['stored_params']:,} ({v['trainable_params']:,} trainable, "
            f"{v['frozen_params']:,} frozen), of which adapters (lora_A, lora_B): {v['adapter_params']:,}",
        ]
        if v["layers"]:
            lines += ["", "| layer | shape (out x in) | rank | init | seed | stream | beta |", "|---|---|---|---|---|---|---|"]
            for layer in v["layers"]:
                init = layer["init"] if layer["stream_version"] == STREAM_VERSION else \
                    f"{layer['init']} (stream v{layer['stream_version']})"
                beta = f"{layer['beta']:.4f}" + ("" if layer["train_beta"] else " (frozen)")
                lines.append(f"| {layer['name'] or '<model>'} | {layer['out_features']} x {layer['in_features']} | "
                             f"{layer['rank']} | {init} | {layer['seed']} | {layer['stream']} | {beta} |")
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.2f} MiB)"


def _finish(trainable: int, frozen: int, adapter: int, backbone_bytes: int, layers: list[dict],
            source: str) -> ModelSummary:
    stored = trainable + frozen
    backbone = sum(layer["out_features"] * layer["in_features"] for layer in layers)
    total = stored + backbone
    values = {
        "trainable_params": trainable,
        "adapter_params": adapter,
        "frozen_params": frozen,
        "stored_params": stored,
        "backbone_params": backbone,
        "backbone_bytes": backbone_bytes,
        "total_params": total,
        "trainable_fraction": trainable / total if total else 0.0,
        "seeded_layers": len(layers),
        "betas": {layer["name"]: layer["beta"] for layer in layers},
        "layers": layers,
    }
    return ModelSummary(values, source)


def _beta_value(beta: torch.Tensor) -> float:
    """beta's value, or NaN where this process does not hold it: on the meta device, or a rank
    whose FSDP2 shard of it is empty (rank 0 holds it). Never a collective, so a summary printed
    on one rank cannot hang the others."""
    if is_dtensor(beta):
        beta = beta.to_local()
    return beta.item() if beta.device.type != "meta" and beta.numel() else math.nan


def _summarize_module(model: nn.Module) -> ModelSummary:
    layers, adapter, backbone_bytes = [], 0, 0
    for name, m in model.named_modules():
        if not isinstance(m, Linear):
            continue
        layers.append({"name": name, "out_features": m.out_features, "in_features": m.in_features, "rank": m.rank,
                       "init": m.init, "seed": m.seed, "stream": m.stream,
                       "stream_version": m.stream_version,
                       "beta": _beta_value(m.beta),
                       "train_beta": m.beta.requires_grad})
        adapter += sum(p.numel() for p in (m.lora_A, m.lora_B) if p is not None)
        backbone_bytes += m.out_features * m.in_features * m.beta.element_size()
    params = list(model.parameters())  # each shared (tied) parameter once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params) - trainable
    return _finish(trainable, frozen, adapter, backbone_bytes, layers, f"model {type(model).__name__}")


def _summarize_checkpoint(directory: Path) -> ModelSummary:
    from safetensors import safe_open

    from .checkpoint import TENSORS_NAME, read_config

    if not directory.is_dir():
        raise ValueError(f"checkpoint {directory}: no such directory")
    config = read_config(directory)
    trainable_names = set(config.get("trainable", []))
    layers, backbone_bytes = [], 0
    with safe_open(str(directory / TENSORS_NAME), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        for entry in config["layers"]:
            beta_key = f"{entry['name']}.beta" if entry["name"] else "beta"
            beta = f.get_tensor(beta_key) if beta_key in shapes else torch.tensor(math.nan)
            layers.append({"name": entry["name"], "out_features": entry["out_features"],
                           "in_features": entry["in_features"], "rank": entry["rank"], "init": entry["init"],
                           "seed": int(entry["seed"]), "stream": int(entry["stream"]),
                           "stream_version": entry.get("stream_version", config["generator"]["stream_version"]),
                           "beta": beta.item(), "train_beta": beta_key in trainable_names})
            backbone_bytes += entry["out_features"] * entry["in_features"] * beta.element_size()
    values = {k: math.prod(s) for k, s in shapes.items()}
    trainable = sum(n for k, n in values.items() if k in trainable_names)
    adapter = sum(e["rank"] * (e["in_features"] + e["out_features"]) for e in config["layers"])
    frozen = sum(values.values()) - trainable
    return _finish(trainable, frozen, adapter, backbone_bytes, layers, f"checkpoint {directory}")


def summary(source: nn.Module | str | os.PathLike) -> ModelSummary:
    """Counts, backbones and betas of a model, or of a checkpoint directory written by
    ``lottalora.save`` (validated as ``load`` does; nothing is built).

    The keys are listed on ``ModelSummary``; ``print(summary(model))`` prints PEFT's line of
    trainable parameters, the backbone's size and a table of the seeded layers. A model counts
    ``parameters()`` (tied ones once); a checkpoint counts its stored tensors, so a persistent
    buffer counts there as a frozen parameter, and "trainable" is what required grad when saved.
    """
    if isinstance(source, nn.Module):
        return _summarize_module(source)
    if isinstance(source, (str, os.PathLike)):
        return _summarize_checkpoint(Path(source))
    raise TypeError(f"source must be an nn.Module or a checkpoint directory path, got {type(source).__name__}")
