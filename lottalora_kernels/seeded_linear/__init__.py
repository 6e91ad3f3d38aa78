"""The seeded matmul y = beta * x @ W_seed^T + scale * (x @ A^T) @ B^T + bias and its input
gradient, one file per regime:

    decode       small M, stream v2: W generated in mma.sync operand registers, split over K
    one_pass     any M, stream v2, one launch: W in wgmma / mma.sync operand registers, x in
                 shared memory, x @ A^T, LoRA, bias, dbeta fused (one_pass_gluon: the Gluon kernel;
                 chosen when dispatch.one_pass_enabled(), off until a GPU has held its bits)
    one_pass_v1  stream v1: W regenerated per row block inside a tl.dot loop
    two_phase    large M: each chunk of W generated once into memory, then cuBLAS
    epilogue     what follows a backbone product (beta, LoRA, bias, dbeta), shared
    dispatch     the one place that picks a regime, and the two entry points

Every Gluon fast path sits beside a plain-Triton twin that the interpreter runs in CI.
"""

from .dispatch import (
    block_regime,
    layer_launches_bind,
    seeded_block_bwd_dx,
    seeded_block_fwd,
    seeded_linear_bwd_dx,
    seeded_linear_bwd_dx_replayable,
    seeded_linear_fwd,
    seeded_linear_fwd_replayable,
)

__all__ = ["block_regime", "layer_launches_bind", "seeded_block_bwd_dx", "seeded_block_fwd", "seeded_linear_bwd_dx",
           "seeded_linear_bwd_dx_replayable", "seeded_linear_fwd", "seeded_linear_fwd_replayable"]
