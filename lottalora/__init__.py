"""lottalora: linear layers whose big weight is a seed, regenerated inside Triton kernels.

    layer = lottalora.Linear(1024, 1024, rank=8, seed=0)   # a drop-in nn.Linear
    y = layer(x)   # beta * x @ W_seed^T + (alpha/r) * (x @ A^T) @ B^T + bias

The package in floors, each importing only the ones below it (import-linter contracts in pyproject.toml):
backbone (the stream) -> ops (the seeded op) -> nn (modules) -> model, distributed -> checkpoint
-> cli. Heavy integrations (Triton, transformers) are imported lazily, never here; the
registration with transformers' Auto classes waits for transformers to import them.
"""

from lottalora_kernels.stream.spec import INITS, STREAM_VERSION, SUPPORTED_STREAM_VERSIONS

from .backbone import BackboneSpec, backbone_block, backbone_signs, stream_for_name
from .checkpoint import describe, from_pretrained, load, save, summary
from .checkpoint.transformers_hook import register_with_transformers
from .model import (
    ModelSummary,
    ScaffoldSchedule,
    add_adapter,
    convert,
    delete_adapter,
    disable_adapter,
    list_adapters,
    materialize,
    merge_and_unload,
    mixed_batch,
    reseed,
    set_adapter,
)
from .nn import Conv1d, Conv2d, Linear
from .ops import SeededLinearFunction, seeded_linear

__all__ = [
    "INITS", "STREAM_VERSION", "SUPPORTED_STREAM_VERSIONS", "BackboneSpec", "Conv1d", "Conv2d", "Linear",
    "ModelSummary", "ScaffoldSchedule", "SeededLinearFunction", "add_adapter", "backbone_block", "backbone_signs",
    "convert",
    "delete_adapter", "describe", "disable_adapter", "from_pretrained", "list_adapters", "load", "materialize",
    "merge_and_unload", "mixed_batch", "reseed", "save", "seeded_linear", "set_adapter", "stream_for_name",
    "summary",
]
__version__ = "0.2.0"

# "lottalora" with transformers' Auto classes (AutoModelForCausalLM.from_pretrained of a
# lottalora directory), now if they are imported, else when they are: transformers is never
# imported from here.
register_with_transformers()
