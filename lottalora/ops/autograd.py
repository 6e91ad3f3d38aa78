"""The seeded op with autograd: ``SeededLinearFunction`` and ``run``, which ``seeded_linear`` and
``seeded_linear_shard`` call once their arguments are checked.

    y = beta * x @ W_block^T + scale * (x @ A^T) @ B^T + bias

The forward saves the input and the small (M, rank) product x @ A^T, never W_seed nor any
out x in tensor; the backward regenerates W_seed's tiles (bit-identical to the forward's).

dbeta = sum(dy * (x @ W^T)) is computed as <x, dy @ W>: the input-gradient pass already forms
dy @ W tile by tile, so dbeta costs one extra read of x there instead of keeping an (M, out)
activation from the forward or recomputing the forward matmul. When x needs no gradient but
beta does, the same pass runs without writing dx; when beta is frozen the x read is skipped.

Derivatives of every order: a backward that builds no graph (create_graph=False: a training
step) runs the fused kernels above. A backward that builds one (create_graph=True: gradient
penalties, Hessian-vector products, gradgradcheck, MAML) computes the same gradients from
differentiable pieces instead: dy @ W as ``products.SeededInputProduct`` (whose backward is the
forward product ``SeededProduct``, whose backward is it again), plain torch ops for the low-rank
terms, beta and the bias. They equal the fused gradients to float rounding and autograd can
differentiate them again, to any order. Forward-mode AD and torch.func's transforms run the op
as ``products.seeded_linear_composite`` (the same pieces), which the fused Function cannot
serve. A call with nothing to differentiate (no_grad, inference_mode, frozen layers) runs the
forward without an autograd node.
"""

from __future__ import annotations

import torch
from torch.autograd import forward_ad

from ..backbone import BackboneBlock
from . import custom_ops
from .custom_ops import run_forward, run_input_grad
from .precision import accumulation_dtype, autocast_enabled, autocast_off
from .products import SeededInputProduct, as_matrix, seeded_linear_composite


class SeededLinearFunction(torch.autograd.Function):
    """Autograd for the seeded op. ``apply(x, lora_A, lora_B, beta, bias, spec, scale, backend,
    lora_input=None, direct=None, plan=None)``: ``spec`` is the layer's BackboneSpec, or the
    BackboneBlock of it this call multiplies by; the tensors as ``seeded_linear`` takes them,
    checked; ``backend`` from ``lottalora.ops.backend.resolve_backend``; ``direct``: whether the
    implementations may be called without the registered ops (``custom_ops.direct_call_ok``;
    None: asked here); ``plan``: the call's ``lottalora.ops.eager.EagerPlan``, whose replays then
    make the forward and the first-order input gradient (a direct call). Returns y as a matrix
    (M, block out), M the product of x's leading dims: a view with x's leading dims made inside
    the node could not be modified in place, so ``with_node`` (what ``seeded_linear`` runs) makes
    it outside."""

    @staticmethod
    def forward(ctx, x, lora_A, lora_B, beta, bias, spec, scale: float, backend: str, lora_input=None,
                direct=None, plan=None):
        block = spec if isinstance(spec, BackboneBlock) else BackboneBlock.whole(spec)
        x2d = as_matrix(x, block.in_features)
        lora_x2d = as_matrix(lora_input, block.in_features) if lora_input is not None else None
        if plan is not None:
            y2d, xa = plan.run_forward(x2d, lora_A, lora_B, beta, bias, lora_x2d)
            packed = None  # the plans serve the Triton backend, which regenerates W in the backward
        else:
            if direct is None:
                direct = custom_ops.direct_call_ok(x, lora_A, lora_B, beta, bias, lora_input)
            # On the torch backend the backward reuses the forward's packed signs (stream v2): one
            # generation per step instead of two. The op also returns xa = (adapter input) @ A^T,
            # which dB needs.
            need_w = ctx.needs_input_grad[0] or ctx.needs_input_grad[3]  # dx or dbeta
            y2d, xa, packed = run_forward(x2d, block, lora_A, lora_B, beta, bias, scale, backend, need_w, lora_x2d,
                                          direct)
        # x is needed by dbeta, and by dA when it is the adapter's input; dB depends on the
        # adapter input through xa. The inputs themselves are saved, not their reshaped views
        # (detached from them), so that a backward that builds a graph differentiates through
        # them.
        need_x = ctx.needs_input_grad[3] or (lora_input is None and any(ctx.needs_input_grad[1:3]))
        need_lora_input = lora_input is not None and any(ctx.needs_input_grad[1:3])
        ctx.save_for_backward(x if need_x else None, xa, lora_A, lora_B, beta, packed,
                              lora_input if need_lora_input else None)
        ctx.block, ctx.scale, ctx.backend, ctx.plan = block, scale, backend, plan
        ctx.x_shape = x.shape
        ctx.separate_lora_input = lora_input is not None
        return y2d  # (M, out): ``with_node`` gives it x's leading dims, outside the node

    @staticmethod
    def backward(ctx, dy):
        # Unpacked once: non-reentrant activation checkpointing allows one unpack per saved tensor.
        saved = ctx.saved_tensors
        x, _, lora_A, lora_B, beta, _, lora_input = saved
        if not torch.is_grad_enabled() and not autocast_enabled(dy.device.type):
            return _first_order_grads(ctx, saved, dy)  # a training step's backward: nothing to switch off
        with autocast_off(dy.device.type):
            if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                               for t in (dy, x, lora_A, lora_B, beta, lora_input)):
                return _differentiable_grads(ctx, saved, dy)
            with torch.no_grad():
                return _first_order_grads(ctx, saved, dy)


def _first_order_grads(ctx, saved: tuple, dy: torch.Tensor) -> tuple:
    """(dx, dA, dB, dbeta, dbias, None, None, None, d lora_input, None, None); ``saved``:
    ctx.saved_tensors."""
    x, xa, lora_A, lora_B, beta, packed, lora_input = saved
    need_dx, need_dA, need_dB, need_dbeta, need_dbias = ctx.needs_input_grad[:5]
    # apply() with the older eight arguments (no lora_input) gives eight entries.
    need_dlora_input = len(ctx.needs_input_grad) > 8 and ctx.needs_input_grad[8]
    block, scale, separate = ctx.block, ctx.scale, ctx.separate_lora_input
    x2d = as_matrix(x, block.in_features) if x is not None else None
    adapter_in = as_matrix(lora_input, block.in_features) if separate and lora_input is not None else x2d
    dy2d = as_matrix(dy, block.out_features)
    if not dy2d.is_contiguous():
        dy2d = dy2d.contiguous()
    has_lora = lora_A is not None
    # dy_b = dy @ B feeds dA and the adapter input's gradient: dx itself when the adapter reads x
    # (fused into the dx pass), a separate tensor when it reads another input (lora_input).
    lora_into_dx = has_lora and not separate
    dy_b = dy2d @ lora_B if has_lora and (need_dA or (need_dx and lora_into_dx) or need_dlora_input) else None

    dx = dbeta = None
    if need_dx or need_dbeta:
        fused_dy_b, fused_A = (dy_b, lora_A) if need_dx and lora_into_dx else (None, None)
        x_for_dbeta = x2d if need_dbeta else None
        if ctx.plan is not None and custom_ops.direct_call_ok(dy2d, fused_dy_b, fused_A, beta, x_for_dbeta):
            dx, dbeta = ctx.plan.input_grad(dy2d, fused_dy_b, fused_A, beta, x_for_dbeta, need_dx)
        else:
            dx, dbeta = run_input_grad(dy2d, block, fused_dy_b, fused_A, beta, scale, x_for_dbeta, need_dx,
                                       ctx.backend, packed)
        if dx is not None and dx.shape != ctx.x_shape:
            dx = dx.reshape(ctx.x_shape)
        if dbeta is not None:
            dbeta = dbeta.to(beta.dtype).reshape(beta.shape)
    dA = _scaled_mm(dy_b.T, adapter_in, scale) if need_dA else None
    dB = _scaled_mm(dy2d.T, xa, scale) if need_dB else None
    dbias = dy2d.sum(0) if need_dbias else None
    d_lora_input = _scaled_mm(dy_b, lora_A, scale).reshape(ctx.x_shape) if need_dlora_input else None
    return dx, dA, dB, dbeta, dbias, None, None, None, d_lora_input, None, None


def _scaled_mm(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * a @ b in one GEMM (the scale is the GEMM's alpha, applied before the result is
    rounded): a matmul and a separate multiply would be two launches and two roundings."""
    if scale == 1.0:
        return a @ b
    # beta=0: addmm ignores its input, so an uninitialised 0-dim tensor serves (no fill launch),
    # kept per dtype and device (it is never read) where it is a plain tensor: one made under
    # tracing (a fake tensor, a functorch wrapper) belongs to that trace.
    if not custom_ops.direct_call_ok(a):
        return torch.addmm(a.new_empty(()), a, b, beta=0, alpha=scale)
    ignored = _ADDMM_IGNORED.get((a.dtype, a.device))
    if ignored is None:
        ignored = _ADDMM_IGNORED[(a.dtype, a.device)] = a.new_empty(())
    return torch.addmm(ignored, a, b, beta=0, alpha=scale)


_ADDMM_IGNORED: dict = {}


def _differentiable_grads(ctx, saved: tuple, dy: torch.Tensor) -> tuple:
    """``_first_order_grads``'s gradients built from differentiable pieces, for a backward that
    builds a graph: dy @ W by ``SeededInputProduct`` (one product serves dx and dbeta, as in the
    fused pass), beta's and the adapters' terms by torch ops."""
    x, xa, lora_A, lora_B, beta, packed, lora_input = saved
    need_dx, need_dA, need_dB, need_dbeta, need_dbias = ctx.needs_input_grad[:5]
    need_dlora_input = len(ctx.needs_input_grad) > 8 and ctx.needs_input_grad[8]
    block, scale, separate = ctx.block, ctx.scale, ctx.separate_lora_input
    acc = accumulation_dtype(dy.dtype)
    x2d = as_matrix(x, block.in_features) if x is not None else None
    adapter_in = as_matrix(lora_input, block.in_features) if separate and lora_input is not None else x2d
    dy2d = as_matrix(dy, block.out_features)
    has_lora = lora_A is not None
    lora_into_dx = has_lora and not separate
    dy_b = dy2d @ lora_B if has_lora and (need_dA or (need_dx and lora_into_dx) or need_dlora_input) else None

    dx = dbeta = None
    if need_dx or need_dbeta:
        grad_w = SeededInputProduct.apply(dy2d, block, ctx.backend, packed).to(acc)  # dy @ W
        if need_dx:
            dx = beta.to(acc) * grad_w
            if lora_into_dx:
                dx = dx + (dy_b @ lora_A).to(acc) * scale
            dx = dx.to(dy.dtype).reshape(ctx.x_shape)
        if need_dbeta:
            dbeta = (grad_w * x2d.to(acc)).sum().to(beta.dtype).reshape(beta.shape)
    if need_dB and (adapter_in.requires_grad or lora_A.requires_grad):
        xa = adapter_in @ lora_A.T  # as a function of what is differentiated again
    # The same (differentiable) GEMMs as the fused path's: the same bits for these three.
    dA = _scaled_mm(dy_b.T, adapter_in, scale) if need_dA else None
    dB = _scaled_mm(dy2d.T, xa, scale) if need_dB else None
    dbias = dy2d.sum(0) if need_dbias else None
    d_lora_input = _scaled_mm(dy_b, lora_A, scale).reshape(ctx.x_shape) if need_dlora_input else None
    return dx, dA, dB, dbeta, dbias, None, None, None, d_lora_input, None, None


def _needs_autograd_node(direct: bool, *tensors: torch.Tensor | None) -> bool:
    """Whether the op must run as SeededLinearFunction: a gradient to track, or anything the
    direct call does not see through (compiling, dispatch modes, meta tensors, DTensor)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return True
    return not direct


def needs_composite(direct: bool, *tensors: torch.Tensor | None) -> bool:
    """Whether the op must run as ``seeded_linear_composite``: an open forward-AD level (dual
    inputs do not report requires_grad, and the fused Function has no jvp) or a torch.func
    transform's wrapped inputs (the fused Function's forward takes ctx, which the transforms
    refuse; the seeded conv asks the same). A direct call's tensors are plain: only the forward-AD
    level is asked then."""
    if forward_ad._current_level >= 0:
        return True
    if direct or torch.compiler.is_compiling():
        return False
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return is_wrapped is not None and any(t is not None and is_wrapped(t) for t in tensors)


def with_node(x: torch.Tensor, lora_A, lora_B, beta, bias, block: BackboneBlock, scale: float, backend: str,
              lora_input, direct, plan=None) -> torch.Tensor:
    """y (*, block out) through ``SeededLinearFunction``. The node's output is the 2-D product and
    the view with x's leading dims is made here, outside it: a view made inside a custom Function
    cannot be modified in place (``y += residual``, ``ReLU(inplace=True)``), as nn.Linear's output
    can."""
    y2d = SeededLinearFunction.apply(x, lora_A, lora_B, beta, bias, block, scale, backend, lora_input, direct, plan)
    return y2d if x.dim() == 2 else y2d.reshape(*x.shape[:-1], y2d.shape[-1])


def run(x: torch.Tensor, block: BackboneBlock, lora_A, lora_B, beta, bias, scale: float, backend: str,
        lora_input: torch.Tensor | None) -> torch.Tensor:
    """The seeded op on checked arguments (``checks.check_seeded_call``'s results): y (*, block
    out) in x's dtype, through SeededLinearFunction where anything needs its node, and through
    ``seeded_linear_composite`` under forward-mode AD and torch.func transforms."""
    tensors = (x, lora_A, lora_B, beta, bias, lora_input)
    direct = custom_ops.direct_call_ok(*tensors)
    with autocast_off(x.device.type):
        if needs_composite(direct, *tensors):
            return seeded_linear_composite(x, block, lora_A, lora_B, beta, bias, scale, backend, lora_input)
        if _needs_autograd_node(direct, *tensors):
            return with_node(x, lora_A, lora_B, beta, bias, block, scale, backend, lora_input, direct)
        x2d = as_matrix(x, block.in_features)
        lora_x2d = as_matrix(lora_input, block.in_features) if lora_input is not None else None
        y2d, _, _ = run_forward(x2d, block, lora_A, lora_B, beta, bias, scale, backend, False, lora_x2d, True)
        return y2d.reshape(*x.shape[:-1], block.out_features)
