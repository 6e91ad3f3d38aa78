"""Seeded modules: drop-in replacements for torch.nn layers whose big weight is a seed.

    linear   Linear: nn.Linear's interface, W_seed regenerated inside the op, LoRA adapters
    conv     Conv1d, Conv2d: nn.Conv*d's interface, W_seed regenerated in chunks of output channels
    adapters the adapter machinery every seeded layer shares: named adapters, init options, mixed batches
    state    the "_extra_state" entry that carries a layer's backbone identity and options
    dense_guard  the empty "weight" a transformers checkpoint of seeded layers holds, so dense classes refuse it
    weight_stand_in  what a seeded layer's ``weight`` reads as: the backbone's shape, dtype and device, no values
    options  checks of rank, alpha and lora_dropout, and the LoRA scaling
    layers   the one walk over a model's seeded layers, and the wrappers around models
"""

from .conv import Conv1d, Conv2d, SeededConv
from .layers import SEEDED_LAYER_TYPES, is_dtensor, plain_name, seeded_layers, unwrap_model
from .linear import Linear

__all__ = ["SEEDED_LAYER_TYPES", "Conv1d", "Conv2d", "Linear", "SeededConv", "is_dtensor", "plain_name",
           "seeded_layers", "unwrap_model"]
