"""What a seeded model is: trainable, adapter and frozen parameters, the backbones it regenerates
instead of storing, and its betas.

``model.parameters()`` no longer counts the backbones once a model is converted (a converted
LLaMA reports a tenth of its architecture's size), so the summary shows them beside PEFT's
familiar line: ``trainable params: ... || all params: ... || trainable%: ...``, where "all"
counts the backbones as the dense weights they replace. ``lottalora.summary`` builds the same
summary from a checkpoint directory (``lottalora.checkpoint.contents``), with the same counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from lottalora_kernels.stream.spec import STREAM_VERSION

from ..nn import SeededConv, is_dtensor, seeded_layers


class ModelSummary(Mapping):
    """A read-only mapping of counts; ``str()`` is a report with one table row per seeded layer.

    Keys: ``trainable_params`` (values that require grad), ``adapter_params`` (lora_A and
    lora_B values), ``frozen_params`` (stored values that do not train), ``stored_params``
    (trainable + frozen: what ``parameters()`` counts), ``backbone_params`` (W_seed values,
    regenerated from seeds and never stored), ``backbone_bytes`` (what the backbones would take
    stored in their layers' dtype), ``total_params`` (stored + backbone: the architecture's
    size with adapters and betas), ``trainable_fraction`` (trainable / total),
    ``seeded_layers`` (count), ``betas`` ({layer name: beta}), ``adapters`` ({adapter name:
    {"layers": how many seeded layers hold it, "params": its lora_A and lora_B values}}, the
    default adapter first), ``layers`` (one dict per seeded layer: name, out_features,
    in_features, rank, init, seed, stream, stream_version, beta, train_beta, and adapters: {name:
    rank} of its named adapters).
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
        counts = {k: v for k, v in self._values.items() if k not in ("betas", "layers", "adapters")}
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
        if v["adapters"]:
            lines.append("adapters: " + ", ".join(f"{name} ({a['layers']} layers, {a['params']:,} values)"
                                                  for name, a in v["adapters"].items()))
        if v["layers"]:
            lines += ["", "| layer | shape (out x in) | rank | init | seed | stream | beta |",
                      "|---|---|---|---|---|---|---|"]
            for layer in v["layers"]:
                init = layer["init"] if layer["stream_version"] == STREAM_VERSION else \
                    f"{layer['init']} (stream v{layer['stream_version']})"
                beta = f"{layer['beta']:.4f}" + ("" if layer["train_beta"] else " (frozen)")
                lines.append(f"| {layer['name'] or '<model>'} | {layer['out_features']} x {layer['in_features']} | "
                             f"{layer['rank']} | {init} | {layer['seed']} | {layer['stream']} | {beta} |")
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.2f} MiB)"


def layer_entry(name: str, out_features: int, in_features: int, rank: int, init: str, seed: int, stream: int,
                stream_version: int, beta: float, train_beta: bool, adapters: dict[str, int] | None = None,
                adapter_values: dict[str, int] | None = None) -> dict:
    """One seeded layer's row of a summary; ``adapters``: {name: rank} of its named adapters;
    ``adapter_values``: {adapter name ("default" for the layer's own): how many values its lora_A
    and lora_B hold}, where known (a grouped conv's lora_B holds out * rank / groups); an adapter
    it leaves out counts rank * (in_features + out_features)."""
    return {"name": name, "out_features": out_features, "in_features": in_features, "rank": rank, "init": init,
            "seed": seed, "stream": stream, "stream_version": stream_version, "beta": beta, "train_beta": train_beta,
            "adapters": dict(adapters or {}), "adapter_values": dict(adapter_values or {})}


def _adapter_counts(layers: list[dict]) -> dict[str, dict[str, int]]:
    """{adapter name: {"layers", "params"}}, the default adapter (the layers' own rank) first."""
    counts: dict[str, dict[str, int]] = {}
    for layer in layers:
        ranks = {"default": layer["rank"], **layer["adapters"]}
        for name, rank in ranks.items():
            if rank:
                entry = counts.setdefault(name, {"layers": 0, "params": 0})
                entry["layers"] += 1
                entry["params"] += layer["adapter_values"].get(
                    name, rank * (layer["in_features"] + layer["out_features"]))
    return counts


def build_summary(trainable: int, frozen: int, backbone_bytes: int, layers: list[dict], source: str) -> ModelSummary:
    """A summary from the stored values' counts and the seeded layers' entries (``layer_entry``):
    the adapters count the values their lora_A and lora_B hold (an entry's ``adapter_values``,
    else rank * (in_features + out_features) per layer and adapter)."""
    stored = trainable + frozen
    backbone = sum(layer["out_features"] * layer["in_features"] for layer in layers)
    adapters = _adapter_counts(layers)
    adapter = sum(a["params"] for a in adapters.values())
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
        "adapters": adapters,
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


def _adapter_values(layer: nn.Module) -> dict[str, int]:
    """{adapter name: lora_A and lora_B values} of a seeded conv, counted from its tensors (a
    grouped conv's are fewer than rank * (in + out)); {} for a Linear, whose tensor-parallel
    shards hold a part of the count that the formula gives whole."""
    if not isinstance(layer, SeededConv):
        return {}
    return {name: layer.adapter_parts(name).lora_A.numel() + layer.adapter_parts(name).lora_B.numel()
            for name in layer.adapter_names()}


def summarize_model(model: nn.Module) -> ModelSummary:
    """The summary of a live model: ``parameters()`` counted (tied ones once) and every seeded
    layer's row."""
    layers, backbone_bytes = [], 0
    for name, m in seeded_layers(model, plain=True).items():
        layers.append(layer_entry(name, m.out_features, m.in_features, m.rank, m.init, m.seed, m.stream,
                                  m.stream_version, _beta_value(m.beta), m.beta.requires_grad,
                                  {n: a.rank for n, a in m.named_adapters.items()}, _adapter_values(m)))
        backbone_bytes += m.out_features * m.in_features * m.beta.element_size()
    params = list(model.parameters())  # each shared (tied) parameter once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params) - trainable
    return build_summary(trainable, frozen, backbone_bytes, layers, f"model {type(model).__name__}")
