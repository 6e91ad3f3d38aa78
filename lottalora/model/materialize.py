"""Allocating what a model built on the meta device still lacks, after ``convert``."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import SEEDED_LAYER_TYPES
from ..nn.adapters import LoraAdapter
from .modules import retie, tied_groups


def materialize(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Allocate on ``device`` and initialise every parameter and buffer still on the meta device.

    For building big seed-only models without their dense weights: construct the model under
    ``torch.device("meta")``, ``convert`` it, then materialize what remains (adapters,
    embeddings, norms, buffers). Seeded layers are initialised as at construction; other modules
    with the model's ``_init_weights`` (transformers models) or their own ``reset_parameters``.
    Raises ValueError naming any module that neither can initialise. Tied parameters (GPT-2's
    lm_head and token embedding) stay tied: each group is one parameter again afterwards, the
    first one's by name order. Returns ``model``.
    """
    ties = tied_groups(model)
    init_weights = getattr(model, "_init_weights", None)
    for name, module in model.named_modules():
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if not any(t.device.type == "meta" for t in tensors):
            continue
        module.to_empty(device=device, recurse=False)
        with torch.no_grad():
            if isinstance(module, (*SEEDED_LAYER_TYPES, LoraAdapter)):
                module.reset_parameters()
            elif init_weights is not None:
                init_weights(module)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                raise ValueError(f"cannot initialise module {name or '<root>'} ({type(module).__name__}) after "
                                 "materializing it: it has no reset_parameters and the model no _init_weights")
    retie(model, ties)
    return model
