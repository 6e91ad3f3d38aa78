"""Turn an existing model into a seeded one: nn.Linear layers become lottalora.Linear.

Each converted layer's stream is derived from its qualified module name (``stream_for_name``),
so two converted copies of one architecture get the same backbones whatever the construction
order, process or machine. Everything is frozen afterwards except the adapters, beta, biases of
converted layers, and the modules named in ``trainable_modules``; a beta that only acts as a
product with another layer's beta (``redundant_betas``) is frozen at 1.0.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import torch
from torch import nn

from lottalora_kernels.stream_spec import resolve_version_and_init

from .linear import Linear
from .redundant_betas import find_redundant_betas

STREAM_NAME_PREFIX = b"lottalora/stream/v1:"


def stream_for_name(qualified_name: str) -> int:
    """The 64-bit stream of the layer at ``qualified_name``: the first 8 bytes, little-endian, of
    SHA-256("lottalora/stream/v1:" + name in UTF-8). Documented in docs/backbone.md."""
    digest = hashlib.sha256(STREAM_NAME_PREFIX + qualified_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


Patterns = str | Sequence[str] | None


def _check_patterns(argument: str, patterns: Patterns) -> None:
    if patterns is None or isinstance(patterns, str):
        if isinstance(patterns, str):
            try:
                re.compile(patterns)
            except re.error as exc:
                raise ValueError(f"{argument} is not a valid regular expression: {exc}") from None
        return
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{argument} must be None, a regex string or a list of name suffixes, got {patterns!r}")


def name_matches(name: str, patterns: Patterns) -> bool:
    """PEFT's rule: a string is a regex that must match the whole qualified name; a list holds
    names or suffixes that match at a ``.`` boundary."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of an nn.Linear or a transformers Conv1D, else None."""
    if isinstance(module, Linear):
        return None
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    cls = type(module)
    if cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers"):
        # GPT-2's Conv1D is x @ W + b with W of shape (in, out): a linear layer stored transposed.
        # The backbone replaces W outright, so only the shape matters.
        return module.weight.shape[0], module.weight.shape[1]
    return None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def convert(
    model: nn.Module, *, rank: int = 8, alpha: float | None = None, use_rslora: bool = False,
    seed: int = 0, init: str | None = None, stream_version: int | None = None, target_modules: Patterns = None,
    adapter_modules: Patterns = None, trainable_modules: Patterns = None, train_beta: bool = True,
) -> nn.Module:
    """Replace linear layers of ``model`` in place with seeded ``lottalora.Linear`` and freeze the rest.

    target_modules: which linear layers to convert (all when None). adapter_modules: which of
    those get a rank-``rank`` adapter; the others become rank-0 seeded layers (all get one when
    None). trainable_modules: modules whose parameters stay trainable (embeddings, norms, a
    head). Each accepts a regex matched against the whole qualified name, or a list of names /
    name suffixes (PEFT's convention). init and stream_version choose the backbone as in
    ``lottalora.Linear`` (default: stream 2's binary backbone). The old dense weights are
    dropped; biases are kept.
    Works on models whose weights are on the meta device (see ``materialize``). Returns model.

    train_beta=False freezes every converted layer's beta at 1.0. With train_beta=True, a beta
    that can only act as a product with the beta of the layer it feeds (LLaMA's MLP up_proj into
    down_proj when neither has an adapter; rule and proof in ``lottalora.redundant_betas``) is
    frozen at 1.0 too, leaving one trained scale per product instead of two equal ones. Make it
    train again with ``layer.beta.requires_grad_(True)`` to reproduce one beta per layer exactly.
    """
    for argument, patterns in (("target_modules", target_modules), ("adapter_modules", adapter_modules),
                               ("trainable_modules", trainable_modules)):
        _check_patterns(argument, patterns)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    resolve_version_and_init(stream_version, init)  # a bad pair fails before the model changes
    if not isinstance(train_beta, bool):
        raise TypeError(f"train_beta must be a bool, got {train_beta!r}")

    targets = []
    for name, module in model.named_modules():
        shape = _linear_shape(module)
        if shape is not None and name and (target_modules is None or name_matches(name, target_modules)):
            targets.append((name, module, shape))
    if not targets:
        raise ValueError(f"target_modules={target_modules!r} matched no nn.Linear (or Conv1D) in the model")
    if trainable_modules is not None:
        clash = [n for n, _, _ in targets if name_matches(n, trainable_modules)]
        if clash:
            raise ValueError(f"{clash} are both conversion targets and trainable_modules: exclude them from "
                             "target_modules to keep them as trained dense layers")
    if adapter_modules is not None and not any(name_matches(n, adapter_modules) for n, _, _ in targets):
        raise ValueError(f"adapter_modules={adapter_modules!r} matched none of the converted layers")

    for name, module, (in_features, out_features) in targets:
        weight = module.weight
        has_adapter = adapter_modules is None or name_matches(name, adapter_modules)
        new = Linear(in_features, out_features, bias=module.bias is not None,
                     rank=rank if has_adapter else 0, alpha=alpha, use_rslora=use_rslora, seed=seed,
                     stream=stream_for_name(name), init=init, stream_version=stream_version,
                     train_beta=train_beta, device=weight.device, dtype=weight.dtype)
        if module.bias is not None and module.bias.device.type != "meta":
            with torch.no_grad():
                new.bias.copy_(module.bias)
        _set_submodule(model, name, new)

    for param in model.parameters():
        param.requires_grad_(False)
    for name, module in model.named_modules():
        if isinstance(module, Linear):
            for param_name, param in module.named_parameters():
                param.requires_grad_(param_name != "beta" or train_beta)
        elif trainable_modules is not None and name and name_matches(name, trainable_modules):
            for param in module.parameters():
                param.requires_grad_(True)
    if train_beta:
        converted = {name for name, _, _ in targets}
        for name in find_redundant_betas(model):
            if name in converted:
                model.get_submodule(name).beta.requires_grad_(False)
    return model


def materialize(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Allocate on ``device`` and initialise every parameter and buffer still on the meta device.

    For building big seed-only models without their dense weights: construct the model under
    ``torch.device("meta")``, ``convert`` it, then materialize what remains (adapters,
    embeddings, norms, buffers). Seeded layers are initialised as at construction; other modules
    with the model's ``_init_weights`` (transformers models) or their own ``reset_parameters``.
    Raises ValueError naming any module that neither can initialise.
    """
    init_weights = getattr(model, "_init_weights", None)
    for name, module in model.named_modules():
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if not any(t.device.type == "meta" for t in tensors):
            continue
        module.to_empty(device=device, recurse=False)
        with torch.no_grad():
            if isinstance(module, Linear):
                module.reset_parameters()
            elif init_weights is not None:
                init_weights(module)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                raise ValueError(f"cannot initialise module {name or '<root>'} ({type(module).__name__}) after "
                                 "materializing it: it has no reset_parameters and the model no _init_weights")
    return model
