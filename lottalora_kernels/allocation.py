"""Output allocation for kernels and the PyTorch reference alike (imports no Triton)."""

from __future__ import annotations

import torch

from .environment import setting


def new_output(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty for kernel outputs; NaN-filled when LOTTALORA_POISON_OUTPUTS=1 (the test
    suite sets it) so that an element a kernel forgets to write cannot pass for a value."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if setting("LOTTALORA_POISON_OUTPUTS", "0") == "1" and out.is_floating_point():
        out.fill_(float("nan"))
    return out
