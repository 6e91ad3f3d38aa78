"""Which implementation runs a seeded layer: the Triton kernels or the PyTorch reference.

``LOTTALORA_BACKEND`` is read at every call (never cached at import): ``triton`` forces the
kernels (on CPU tensors they need ``TRITON_INTERPRET=1`` set before Triton is imported),
``torch`` forces the reference; unset or ``auto`` picks Triton for CUDA tensors when Triton is
installed and the reference otherwise.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from . import reference

BACKENDS = ("auto", "triton", "torch")


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(device: torch.device) -> str:
    """'triton' or 'torch' for tensors on ``device``, honouring ``LOTTALORA_BACKEND``."""
    choice = os.environ.get("LOTTALORA_BACKEND", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"LOTTALORA_BACKEND must be one of {BACKENDS}, got {choice!r}")
    if choice == "auto":
        return "triton" if device.type == "cuda" and _triton_available() else "torch"
    if choice == "triton":
        if not _triton_available():
            raise RuntimeError("LOTTALORA_BACKEND=triton but Triton is not installed")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            raise RuntimeError(
                f"LOTTALORA_BACKEND=triton on a {device.type} tensor needs TRITON_INTERPRET=1, "
                "set before Triton is first imported"
            )
    return choice


def forward_op(backend: str):
    """(x2d, spec, xa, lora_B, beta, bias, scale) -> y2d for ``backend``."""
    if backend == "torch":
        return reference.seeded_linear_ref_fwd
    from lottalora_kernels.seeded_matmul import seeded_linear_fwd

    def run(x, spec, xa, lora_B, beta, bias, scale):
        return seeded_linear_fwd(x, seed=spec.seed, stream=spec.stream, out_features=spec.out_features,
                                 init=spec.init, xa=xa, lora_B=lora_B, beta=beta, bias=bias, scale=scale)
    return run


def backward_dx_op(backend: str):
    """(dy2d, spec, dy_b, lora_A, beta, scale, x_for_dbeta, need_dx) -> (dx, dbeta)."""
    if backend == "torch":
        return reference.seeded_linear_ref_bwd_dx
    from lottalora_kernels.seeded_matmul import seeded_linear_bwd_dx

    def run(dy, spec, dy_b, lora_A, beta, scale, x_for_dbeta, need_dx):
        return seeded_linear_bwd_dx(dy, seed=spec.seed, stream=spec.stream, in_features=spec.in_features,
                                    init=spec.init, dy_b=dy_b, lora_A=lora_A, beta=beta, scale=scale,
                                    x_for_dbeta=x_for_dbeta, need_dx=need_dx)
    return run


def supported_dtypes(backend: str) -> tuple[torch.dtype, ...]:
    if backend == "torch":
        return (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    return (torch.float32, torch.float16, torch.bfloat16)
