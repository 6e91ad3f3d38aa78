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

BACKENDS = ("auto", "triton", "torch")


# Looked up once: asked on every forward on CUDA, and fixed for a process. find_spec does not
# import Triton. (A functools cache here makes torch.compile warn as it traces the wrapper.)
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _triton_available() -> bool:
    return _TRITON_INSTALLED


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


_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def direct_call_ok(*tensors: torch.Tensor | None) -> bool:
    """Whether the ops' Python implementations may run without the registered op: eager mode,
    no dispatch mode (fake tensors, functionalization), and plain tensors (not DTensor nor a
    functorch wrapper). Anything else goes through the op, which is what those systems see."""
    if torch.compiler.is_compiling():
        return False
    stack_depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    if stack_depth is None or is_wrapped is None or stack_depth() > 0:
        return False
    return all(t is None or (type(t) in _PLAIN_TENSOR_TYPES and not is_wrapped(t)) for t in tensors)


def forward_op(backend: str):
    """(x2d, spec, lora_A, lora_B, beta, bias, scale, keep_signs, lora_x) -> (y2d, xa = (lora_x
    or x2d) @ lora_A^T or None, packed signs or None) through the registered op for ``backend``
    (its implementation directly when ``direct_call_ok``: same code, less dispatch)."""
    from .ops import seeded_linear_fwd_impl, seeded_linear_fwd_op, spec_words

    def run(x, spec, lora_A, lora_B, beta, bias, scale, keep_signs=False, lora_x=None, direct=None):
        if direct is None:  # a caller that has just asked passes its answer
            direct = direct_call_ok(x, lora_A, lora_B, beta, bias, lora_x)
        op = seeded_linear_fwd_impl if direct else seeded_linear_fwd_op
        y, xa, packed = op(x, lora_A, lora_B, beta, bias, spec_words(spec), spec.out_features, spec.init,
                           spec.version, scale, backend, keep_signs, lora_x)
        return y, (xa if lora_A is not None else None), (packed if packed.numel() else None)
    return run


def backward_dx_op(backend: str):
    """(dy2d, spec, dy_b, lora_A, beta, scale, x_for_dbeta, need_dx, packed) -> (dx, dbeta)."""
    from .ops import seeded_linear_bwd_dx_impl, seeded_linear_bwd_dx_op, spec_words

    def run(dy, spec, dy_b, lora_A, beta, scale, x_for_dbeta, need_dx, packed=None):
        direct = direct_call_ok(dy, dy_b, lora_A, beta, x_for_dbeta, packed)
        op = seeded_linear_bwd_dx_impl if direct else seeded_linear_bwd_dx_op
        dx, dbeta = op(dy, dy_b, lora_A, beta, x_for_dbeta, spec_words(spec), spec.in_features, spec.init,
                       spec.version, scale, need_dx, backend, packed)
        return (dx if need_dx else None), (dbeta if x_for_dbeta is not None else None)
    return run


def supported_dtypes(backend: str) -> tuple[torch.dtype, ...]:
    if backend == "torch":
        return (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    return (torch.float32, torch.float16, torch.bfloat16)
