"""lottalora: linear layers whose big weight is a seed, regenerated inside Triton kernels.

    layer = lottalora.Linear(1024, 1024, rank=8, seed=0)   # a drop-in nn.Linear
    y = layer(x)   # beta * x @ W_seed^T + (alpha/r) * (x @ A^T) @ B^T + bias

The package in floors, each importing only the ones below it (contracts in .importlinter):
backbone (the stream) -> ops (the seeded op) -> nn (modules) -> model, distributed -> checkpoint
-> cli. Heavy integrations (Triton, transformers) are imported lazily, never here.
"""

from lottalora_kernels.stream.spec import INITS, STREAM_VERSION, SUPPORTED_STREAM_VERSIONS

from .backbone import BackboneSpec, backbone_block, backbone_signs, stream_for_name
from .checkpoint import describe, from_pretrained, load, save, summary
from .model import ModelSummary, ScaffoldSchedule, convert, materialize, merge_and_unload, reseed
from .nn import Linear
from .ops import SeededLinearFunction, seeded_linear

__all__ = [
    "INITS", "STREAM_VERSION", "SUPPORTED_STREAM_VERSIONS", "BackboneSpec", "Linear", "ModelSummary",
    "ScaffoldSchedule", "SeededLinearFunction", "backbone_block", "backbone_signs", "convert", "describe",
    "from_pretrained", "load", "materialize", "merge_and_unload", "reseed", "save",
    "seeded_linear", "stream_for_name", "summary",
]
__version__ = "0.2.0"
