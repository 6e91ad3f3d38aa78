"""lottalora: linear layers whose big weight is a seed, regenerated inside Triton kernels.

    layer = lottalora.Linear(1024, 1024, rank=8, seed=0)   # a drop-in nn.Linear
    y = layer(x)   # beta * x @ W_seed^T + (alpha/r) * (x @ A^T) @ B^T + bias

Heavy integrations (Triton, transformers) are imported lazily, never here.
"""

from lottalora_kernels.stream_spec import INITS, STREAM_VERSION, SUPPORTED_STREAM_VERSIONS

from .checkpoint import describe, load, save
from .convert import convert, materialize, stream_for_name
from .merge import merge_and_unload
from .functional import SeededLinearFunction, seeded_linear
from .linear import Linear
from .pretrained import from_pretrained
from .scaffold import ScaffoldSchedule, reseed
from .stream import BackboneSpec, backbone_block, backbone_signs
from .summary import ModelSummary, summary

__all__ = [
    "INITS", "STREAM_VERSION", "SUPPORTED_STREAM_VERSIONS", "BackboneSpec", "Linear", "ModelSummary",
    "ScaffoldSchedule", "SeededLinearFunction", "backbone_block", "backbone_signs", "convert", "describe",
    "from_pretrained", "load", "materialize", "merge_and_unload", "reseed", "save",
    "seeded_linear", "stream_for_name", "summary",
]
__version__ = "0.2.0"
