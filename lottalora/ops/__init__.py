"""The seeded op, PyTorch side: the floor above the backbone.

    backend        the one place that decides Triton or PyTorch, and calls it
    torch_backend  the op in plain PyTorch (any device)
    custom_ops     the torch.library registration, and the direct call in eager mode
    checks         the arguments, checked once at the boundary
    precision      the accumulation dtype and autocast
    products       SeededProduct, SeededInputProduct: the backbone's two products, each the other's derivative
    autograd       SeededLinearFunction
    functional     seeded_linear
    shard          seeded_linear_shard: the op on a block of a bigger backbone
    reference      seeded_linear_ref: the readable float64 reference the tests hold all to
"""

from .autograd import SeededLinearFunction
from .backend import dense_block, resolve_backend
from .functional import seeded_linear
from .products import SeededInputProduct, SeededProduct
from .reference import seeded_linear_ref
from .shard import seeded_linear_shard

__all__ = ["SeededInputProduct", "SeededLinearFunction", "SeededProduct", "dense_block", "resolve_backend",
           "seeded_linear", "seeded_linear_ref", "seeded_linear_shard"]
