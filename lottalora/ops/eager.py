"""Eager plans: a seeded call whose decisions were all made before, made again at a launch's cost.

An eager call of ``seeded_linear`` checks its arguments, picks the backend, the autograd route
and the regime, and plans its kernel launch: tens of microseconds of Python, the same for every
call of a layer at one shape (``benchmarks.host_time``; benchmarks/NOTES.md, "Host time"). Where
the call's launches can be bound (the Triton backend on a whole stream-v2 layer in every regime,
and stream v1's two-phase regime: the one-pass forward and input gradient, one launch each; the
decode regime's at up to 32 rows, two each; the two-phase regime's generator and epilogue per
chunk of W, around cuBLAS's GEMMs; and a tensor-parallel rank's block of a layer in the one-pass
regime), the first call with a given key makes an ``EagerPlan`` and
later calls with that key run it: allocate the outputs, launch the compiled kernels (through the
autograd node when something needs a gradient).

The key (``call_key``) holds everything those decisions read: each tensor's shape, strides,
dtype, device, 16-byte alignment (Triton specializes on it) and requires_grad; whether
lora_input is x itself (the kernels read x once then); the spec (by identity: the plan holds
it, and a spec is frozen), or for a ``BackboneBlock`` its layer's spec by identity and its rows
and columns (a rank makes a new block per call); scale; the grad mode; the backend
(``LOTTALORA_BACKEND``, read at every call); and the dispatch's settings
(``backend.replay_state``). Calls the plans do not serve are never keyed and take the full path
every time: autocast, forward-mode AD, torch.func transforms, compiling, dispatch modes, tensor
subclasses, meta tensors, a scale that is not a Python float or int, a strided bias (the kernels
get a contiguous copy of it at each call). The input gradient's replays are
keyed at each backward on dy's layout, the saved tensors' (a saved-tensor hook may hand back
copies laid out otherwise) and the settings, and run only where the full path would call the
implementation directly (``custom_ops.direct_call_ok``: not under compiled autograd or a
dispatch mode). A key whose first call had
no launch to replay maps to ``NO_PLAN``; calls known not to bind theirs are not keyed at all
(``backend.launches_bind``: stream v1's one-pass regime, a block of a layer outside the one-pass
regime, whose chunks go through the torch backend's loops). Since
a plan exists only for a key whose first call passed ``check_seeded_call``, every call it serves
is one those checks accept. What a launch reads besides its arguments (direct launches switched
off, launch hooks, the current device, Triton's knobs) is checked by the launch itself
(``lottalora_kernels.launch.BoundLaunch``).
"""

from __future__ import annotations

import itertools

import torch
from torch.autograd import forward_ad

from ..backbone import BackboneBlock, BackboneSpec
from . import backend as backends
from . import checks
from .autograd import with_node
from .products import as_matrix

NO_PLAN = object()  # a key whose calls take the full path
_MAX_PLANS = 16384  # keys kept (a shape is part of a key: layers times the batch sizes seen)
_MAX_INPUT_GRADS = 16  # input-gradient replays per plan (dy's strides and alignment may vary)
_PLANS: dict = {}

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_dispatch_stack_depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
_is_functorch_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
_is_compiling = torch.compiler.is_compiling
_is_autocast_enabled = torch.is_autocast_enabled


def _tensor_key(t: torch.Tensor | None):
    """A tensor's part of a key; False when the plans cannot serve it (a subclass, a functorch
    wrapper)."""
    if t is None:
        return None
    if type(t) not in _PLAIN or _is_functorch_wrapped(t):
        return False
    return (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() & 15, t.requires_grad)


def _layout(t: torch.Tensor | None):
    """What a bound launch assumes of a tensor argument beyond its values."""
    if t is None:
        return None
    return (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() & 15)


def call_key(x, spec, lora_A, lora_B, beta, bias, scale, lora_input) -> tuple | None:
    """The key of a ``seeded_linear`` call (see the module docstring), or None when the plans do
    not serve it."""
    if _is_compiling():  # first: a traced id(spec) would guard the graph on each layer's spec object
        return None
    if type(spec) is BackboneSpec:
        backbone = id(spec)
    elif type(spec) is BackboneBlock and type(spec.spec) is BackboneSpec:
        # A tensor-parallel rank makes a new block per call: its layer's spec (held by the plan's
        # block) and its ranges are what it is.
        backbone = (id(spec.spec), spec.rows, spec.cols)
    else:
        return None
    if type(x) not in _PLAIN or type(scale) not in (float, int) or _dispatch_stack_depth is None \
            or _is_functorch_wrapped is None:
        return None
    device = x.device
    if device.type == "meta" or _dispatch_stack_depth() or forward_ad._current_level >= 0 \
            or _is_autocast_enabled(device.type):
        return None
    backend = checks.resolve_backend(device)
    if backend != "triton":
        return None
    if type(spec) is BackboneBlock or spec.version != 2:  # every regime of a whole v2 layer binds
        if not backends.launches_bind(spec if type(spec) is BackboneBlock else BackboneBlock.whole(spec), x):
            return None  # nothing to replay, so no key to pay for
    state = backends.replay_state()
    parts = tuple(map(_tensor_key, (x, lora_A, lora_B, beta, bias, lora_input)))
    if False in parts or not backends.bias_is_kernel_ready(bias):  # a strided bias is copied per call
        return None
    # lora_input given as x itself is a kernel specialization of its own (x read once for both).
    return (backbone, scale, torch.is_grad_enabled(), backend, state, parts, lora_input is x)


def lookup(key: tuple):
    """The plan for ``key``: an ``EagerPlan``, ``NO_PLAN``, or None (not seen yet)."""
    return _PLANS.get(key)


class EagerPlan:
    """A ``seeded_linear`` call made again: ``plan(x, lora_A, lora_B, beta, bias, lora_input)``
    with the tensors of a call keyed as the first was. ``forward``: the forward launch's replay
    (``backend.forward_replayable``); ``input_grads``: the input gradient's, by what keys them
    (``input_grad``). Through ``SeededLinearFunction`` when the key asks for gradients."""

    __slots__ = ("spec", "block", "scale", "backend", "with_node", "out_shape", "in_features", "forward",
                 "input_grads")

    def __init__(self, spec, block, scale: float, backend: str, with_node: bool, out_shape):
        self.spec, self.block, self.scale, self.backend = spec, block, scale, backend
        self.with_node, self.out_shape = with_node, out_shape
        self.in_features = block.in_features
        self.forward = None
        self.input_grads: dict = {}

    def __call__(self, x, lora_A, lora_B, beta, bias, lora_input):
        if self.with_node:
            return with_node(x, lora_A, lora_B, beta, bias, self.block, self.scale, self.backend, lora_input, True,
                             self)
        if x.dim() == 2:
            y, _ = self.forward(x, lora_A, lora_B, beta, bias, lora_input)
            return y
        y, _ = self.forward(as_matrix(x, self.in_features), lora_A, lora_B, beta, bias,
                            as_matrix(lora_input, self.in_features) if lora_input is not None else None)
        return y.reshape(self.out_shape)

    def run_forward(self, x2d, lora_A, lora_B, beta, bias, lora_x2d):
        """(y (M, out), xa or None): the replay, or at the first call the forward that makes it."""
        if self.forward is not None:
            return self.forward(x2d, lora_A, lora_B, beta, bias, lora_x2d)
        y, xa, self.forward = backends.forward_replayable(self.backend, x2d, self.block, lora_A, lora_B, beta, bias,
                                                          self.scale, lora_x2d)
        return y, xa

    def input_grad(self, dy, dy_b, lora_A, beta, x_for_dbeta, need_dx: bool):
        """``backend.input_grad``'s (dx, dbeta) on the first-order backward's arguments, replayed
        where a call keyed alike made its launch before (dy's layout is the key: the forward's
        key fixes the rest)."""
        # The saved tensors' layouts too: a saved-tensor hook (offloading, save_on_cpu) may give
        # back a copy laid out otherwise than the forward's input. And the settings, read now as
        # the full path reads them in each backward.
        key = (_layout(dy), dy_b is None, _layout(lora_A), _layout(beta), _layout(x_for_dbeta), need_dx,
               backends.replay_state())
        replay = self.input_grads.get(key)
        if replay is not None:
            return replay(dy, dy_b, lora_A, beta, x_for_dbeta)
        dx, dbeta, replay = backends.input_grad_replayable(self.backend, dy, self.block, dy_b, lora_A, beta,
                                                           self.scale, x_for_dbeta, need_dx)
        if replay is not None:
            if len(self.input_grads) >= _MAX_INPUT_GRADS:
                self.input_grads.clear()
            self.input_grads[key] = replay
        return dx, dbeta


def first_call(key: tuple, x, spec, block, lora_A, lora_B, beta, bias, scale: float, backend: str, lora_input):
    """The op on checked arguments (``check_seeded_call``'s results) for a key not seen yet:
    run through a new plan, which is kept when the call made a launch to replay."""
    with_node = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                for t in (x, lora_A, lora_B, beta, bias, lora_input))
    plan = EagerPlan(spec, block, scale, backend, with_node, (*x.shape[:-1], block.out_features))
    if with_node:
        y = plan(x, lora_A, lora_B, beta, bias, lora_input)
    else:
        y2d, _ = plan.run_forward(as_matrix(x, block.in_features), lora_A, lora_B, beta, bias,
                                  as_matrix(lora_input, block.in_features) if lora_input is not None else None)
        y = y2d.reshape(plan.out_shape)
    if len(_PLANS) >= _MAX_PLANS:
        # The oldest quarter goes (insertion order): the keys a model keeps calling are made again
        # at their next call, where a table started over would drop them all at once.
        for old_key in list(itertools.islice(_PLANS, _MAX_PLANS // 4)):
            del _PLANS[old_key]
    _PLANS[key] = plan if plan.forward is not None else NO_PLAN
    return y


def clear() -> None:
    """Forget every plan (tests; past its size the table drops its oldest keys by itself)."""
    _PLANS.clear()
