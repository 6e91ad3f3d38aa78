"""The seeded linear op with autograd: what ``lottalora.Linear`` calls.

    y = beta * x @ W_seed^T + scale * (x @ A^T) @ B^T + bias

The forward saves the input and the small (M, rank) product x @ A^T, never W_seed nor any
out x in tensor; the backward regenerates W_seed's tiles (bit-identical to the forward's).

dbeta = sum(dy * (x @ W_seed^T)) is computed as <x, dy @ W_seed>: the input-gradient pass
already forms dy @ W_seed tile by tile, so dbeta costs one extra read of x there instead of
keeping an (M, out) activation from the forward or recomputing the forward matmul. When x needs
no gradient but beta does, the same pass runs without writing dx; when beta is frozen the x
read is skipped.

The backward is not itself differentiable (it calls the seeded kernels, which have no autograd
of their own): a second derivative through it is refused with an error, never answered wrong.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import torch
from torch.autograd import forward_ad as _forward_ad

from .backend import backward_dx_op, direct_call_ok, forward_op, resolve_backend, supported_dtypes
from .stream import BackboneSpec

DOUBLE_BACKWARD_ERROR = (
    "lottalora.seeded_linear (lottalora.Linear) has no second derivative: double backward "
    "(differentiating gradients taken with create_graph=True: gradient penalties, Hessians, "
    "gradgradcheck) is not supported"
)


class _RefuseSecondDerivative(torch.autograd.Function):
    """Hands first-order gradients through unchanged; a backward through them raises.

    Its inputs are the tensors the gradients depend on (dy, x, lora_A, lora_B, beta), so the
    autograd engine has to pass through it to reach any of them: torch's
    ``once_differentiable`` hangs its error on detached copies instead, and a second derivative
    that also reaches x by another path silently leaves out the part through the gradients.
    """

    @staticmethod
    def forward(ctx, grads: list, *depends_on: torch.Tensor):
        return tuple(grads)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)


def _autocast_off(device_type: str):
    """Autocast disabled on ``device_type`` while the op runs: its float32 accumulations must not
    be recast to the autocast dtype (the casts autocast would do are done before, by hand)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class SeededLinearFunction(torch.autograd.Function):
    """Autograd for the seeded linear op; see ``seeded_linear`` for the arguments."""

    @staticmethod
    def forward(ctx, x, lora_A, lora_B, beta, bias, spec: BackboneSpec, scale: float, backend: str, lora_input=None):
        x2d = x.reshape(-1, spec.in_features)
        lora_x2d = lora_input.reshape(-1, spec.in_features) if lora_input is not None else None
        # On the torch backend the backward reuses the forward's packed signs (stream v2):
        # one generation per step instead of two (lottalora.reference). The op also returns
        # xa = (adapter input) @ A^T, which dB needs: the decode kernels make it beside the
        # backbone product.
        need_w = ctx.needs_input_grad[0] or ctx.needs_input_grad[3]  # dx or dbeta
        y2d, xa, packed = forward_op(backend)(x2d, spec, lora_A, lora_B, beta, bias, scale, keep_signs=need_w,
                                              lora_x=lora_x2d)
        # x is needed by dbeta, and by dA when it is the adapter's input; dB depends on the
        # adapter input through xa. The inputs themselves are saved, not their reshaped views
        # (detached from them), so that a refused double backward can list them among the
        # tensors the gradients depend on.
        need_x = ctx.needs_input_grad[3] or (lora_input is None and any(ctx.needs_input_grad[1:3]))
        need_lora_input = lora_input is not None and any(ctx.needs_input_grad[1:3])
        ctx.save_for_backward(x if need_x else None, xa, lora_A, lora_B, beta, packed,
                              lora_input if need_lora_input else None)
        ctx.spec, ctx.scale, ctx.backend = spec, scale, backend
        ctx.x_shape = x.shape
        ctx.separate_lora_input = lora_input is not None
        return y2d.reshape(*x.shape[:-1], spec.out_features)

    @staticmethod
    def backward(ctx, dy):
        create_graph = torch.is_grad_enabled()
        # Unpacked once: non-reentrant activation checkpointing allows one unpack per saved tensor.
        saved = ctx.saved_tensors
        with torch.no_grad(), _autocast_off(dy.device.type):
            grads = _seeded_linear_bwd(ctx, saved, dy)
        x, _, lora_A, lora_B, beta, _, lora_input = saved
        depends_on = [t for t in (dy, x, lora_A, lora_B, beta, lora_input) if t is not None]
        if not create_graph or not any(t.requires_grad for t in depends_on):
            return grads
        present = [i for i, g in enumerate(grads) if g is not None]
        refused = _RefuseSecondDerivative.apply([grads[i] for i in present], *depends_on)
        out = list(grads)
        for i, g in zip(present, refused, strict=True):
            out[i] = g
        return tuple(out)


def _seeded_linear_bwd(ctx, saved: tuple, dy: torch.Tensor) -> tuple:
    """The first-order gradients (dx, dA, dB, dbeta, dbias, None, None, None, d lora_input);
    ``saved``: ctx.saved_tensors."""
    x, xa, lora_A, lora_B, beta, packed, lora_input = saved
    need_dx, need_dA, need_dB, need_dbeta, need_dbias = ctx.needs_input_grad[:5]
    # apply() without lora_input (the op's older eight arguments) gives eight entries.
    need_dlora_input = len(ctx.needs_input_grad) > 8 and ctx.needs_input_grad[8]
    spec, scale, separate = ctx.spec, ctx.scale, ctx.separate_lora_input
    x2d = x.reshape(-1, spec.in_features) if x is not None else None
    adapter_in = lora_input.reshape(-1, spec.in_features) if separate and lora_input is not None else x2d
    dy2d = dy.reshape(-1, spec.out_features)
    if not dy2d.is_contiguous():
        dy2d = dy2d.contiguous()
    has_lora = lora_A is not None
    # dy_b = dy @ B feeds dA and the adapter input's gradient: dx itself when the adapter reads x
    # (fused into the dx pass), a separate tensor when it reads another input (lora_input).
    lora_into_dx = has_lora and not separate
    dy_b = dy2d @ lora_B if has_lora and (need_dA or (need_dx and lora_into_dx) or need_dlora_input) else None

    dx = dbeta = None
    if need_dx or need_dbeta:
        dx, dbeta = backward_dx_op(ctx.backend)(
            dy2d, spec, dy_b if need_dx and lora_into_dx else None, lora_A if need_dx and lora_into_dx else None,
            beta, scale, x2d if need_dbeta else None, need_dx, packed,
        )
        if dx is not None:
            dx = dx.reshape(ctx.x_shape)
        if dbeta is not None:
            dbeta = dbeta.to(beta.dtype).reshape(beta.shape)
    dA = _scaled_mm(dy_b.T, adapter_in, scale) if need_dA else None
    dB = _scaled_mm(dy2d.T, xa, scale) if need_dB else None
    dbias = dy2d.sum(0) if need_dbias else None
    d_lora_input = _scaled_mm(dy_b, lora_A, scale).reshape(ctx.x_shape) if need_dlora_input else None
    return dx, dA, dB, dbeta, dbias, None, None, None, d_lora_input


def _scaled_mm(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * a @ b in one GEMM (the scale is the GEMM's alpha, applied before the result is
    rounded): a matmul and a separate multiply were two launches and two roundings."""
    if scale == 1.0:
        return a @ b
    # beta=0: addmm ignores its input, so an uninitialised 0-dim tensor serves (no fill launch).
    return torch.addmm(a.new_empty(()), a, b, beta=0, alpha=scale)


_MATERIALIZE_HINT = " (a model built on the meta device needs lottalora.materialize(model, device) before it runs)"


def _check_param(name: str, tensor: torch.Tensor | None, shape: tuple, x: torch.Tensor) -> None:
    if tensor is None:
        return
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if tensor.device != x.device:
        hint = _MATERIALIZE_HINT if tensor.device.type == "meta" else ""
        raise ValueError(f"{name} is on {tensor.device} but the input is on {x.device}{hint}")
    if tensor.dtype != x.dtype and name != "beta":
        raise TypeError(f"{name} has dtype {tensor.dtype} but the input has {x.dtype}: they must match")


def _check_types(x, spec, lora_A, lora_B, beta, bias, scale) -> None:
    """TypeError/ValueError naming the argument for anything that is not what the op takes."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"spec must be a lottalora.BackboneSpec, got {type(spec).__name__} {spec!r}")
    for name, t in (("lora_A", lora_A), ("lora_B", lora_B), ("bias", bias)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if not isinstance(beta, torch.Tensor):
        raise TypeError(f"beta must be a one-element torch.Tensor, got {type(beta).__name__} {beta!r}")
    if not beta.is_floating_point():
        raise TypeError(f"beta must be a floating-point tensor, got dtype {beta.dtype}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale!r}")
    if x.device.type == "meta":
        raise ValueError(f"input is on the meta device, which holds no values: seeded_linear computes "
                         f"them{_MATERIALIZE_HINT}")


def _check_lora_input(lora_input: torch.Tensor | None, lora_A: torch.Tensor | None, x: torch.Tensor) -> None:
    """ValueError/TypeError unless lora_input is None or an input for this layer's adapter: x's
    shape, dtype and device, and an adapter to feed."""
    if lora_input is None:
        return
    if lora_A is None:
        raise ValueError("lora_input was given to a layer without an adapter (lora_A and lora_B are None)")
    _check_param("lora_input", lora_input, tuple(x.shape), x)


def _autocast_cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """What autocast does to a matmul argument: floating tensors other than float64 go to the
    autocast dtype; float64 stays float64 (nn.Linear keeps a float64 layer in float64)."""
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def seeded_linear(
    x: torch.Tensor, spec: BackboneSpec, lora_A: torch.Tensor | None, lora_B: torch.Tensor | None,
    beta: torch.Tensor, bias: torch.Tensor | None = None, scale: float = 1.0, lora_input: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = beta * x @ W_seed^T + scale * (lora_input @ lora_A^T) @ lora_B^T + bias, with autograd.

    x: (*, in_features); lora_A: (rank, in_features) and lora_B: (out_features, rank), or both
    None for a rank-0 layer; beta: a one-element floating-point tensor; bias: (out_features,) or
    None; scale: a finite real number; lora_input: the adapter's input, x's shape, dtype and
    device (x when None; e.g. dropout(x) for PEFT's lora_dropout, fused like x's own adapter).
    Returns (*, out_features) in x.dtype. Inside torch.autocast, the tensors are cast to the
    autocast dtype as nn.Linear's are (float64 ones are left alone) and the op accumulates in
    float32 as outside it. W_seed is regenerated from ``spec``, never stored. Differentiable once
    (double backward raises).
    """
    _check_types(x, spec, lora_A, lora_B, beta, bias, scale)
    if lora_input is not None and not isinstance(lora_input, torch.Tensor):
        raise TypeError(f"lora_input must be a torch.Tensor or None, got {type(lora_input).__name__}")
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # As nn.Linear under autocast: compute in the autocast dtype; gradients flow back
        # through the casts to parameters kept in their own dtype.
        dtype = torch.get_autocast_dtype(device_type)
        x, lora_A, lora_B, bias, lora_input = (_autocast_cast(t, dtype) for t in (x, lora_A, lora_B, bias, lora_input))
    if x.dim() == 0 or x.shape[-1] != spec.in_features:
        raise ValueError(
            f"input must have shape (*, in_features={spec.in_features}), got {tuple(x.shape)}"
        )
    backend = resolve_backend(x.device)
    dtypes = supported_dtypes(backend)
    if x.dtype not in dtypes:
        raise TypeError(f"input dtype must be one of {dtypes} on the {backend} backend, got {x.dtype}")
    if (lora_A is None) != (lora_B is None):
        raise ValueError("lora_A and lora_B must both be given or both be None")
    rank = lora_A.shape[0] if lora_A is not None else 0
    _check_param("lora_A", lora_A, (rank, spec.in_features), x)
    _check_param("lora_B", lora_B, (spec.out_features, rank), x)
    _check_param("bias", bias, (spec.out_features,), x)
    if beta.numel() != 1:
        raise ValueError(f"beta must have one element, got shape {tuple(beta.shape)}")
    _check_param("beta", beta, tuple(beta.shape), x)
    _check_lora_input(lora_input, lora_A, x)
    with _autocast_off(device_type):
        if _needs_autograd_function(x, lora_A, lora_B, beta, bias, lora_input):
            return SeededLinearFunction.apply(x, lora_A, lora_B, beta, bias, spec, float(scale), backend, lora_input)
        return _seeded_linear_forward_only(x, spec, lora_A, lora_B, beta, bias, float(scale), backend, lora_input)


def _needs_autograd_function(*tensors: torch.Tensor | None) -> bool:
    """Whether the op must run as SeededLinearFunction: a gradient to track; an open forward-AD
    level (dual inputs do not report requires_grad, and the Function refuses them by name where
    the bare op would drop their tangents); or anything the direct call does not see through
    (compiling, dispatch modes, DTensor, functorch transforms: ``backend.direct_call_ok``)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return True
    return _forward_ad._current_level >= 0 or not direct_call_ok(*tensors)


def _seeded_linear_forward_only(x, spec, lora_A, lora_B, beta, bias, scale, backend, lora_input):
    """SeededLinearFunction's forward without its autograd node (no_grad, inference_mode, frozen
    layers; called only where direct_call_ok held): the same op call, minus the node's host time."""
    lora_x2d = lora_input.reshape(-1, spec.in_features) if lora_input is not None else None
    y2d, _, _ = forward_op(backend)(x.reshape(-1, spec.in_features), spec, lora_A, lora_B, beta, bias, scale,
                                    keep_signs=False, lora_x=lora_x2d, direct=True)
    return y2d.reshape(*x.shape[:-1], spec.out_features)
