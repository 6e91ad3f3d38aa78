"""The seeded convolution: y = beta * conv(x, W_seed), W_seed never whole in memory.

    x: (N, C, *spatial) already padded (padding 0 here); W_seed: the stream's
    (out_channels, C // groups * prod(kernel_size)) matrix viewed as the conv's weight
    (out_channels, C // groups, *kernel_size); y: (N, out_channels, *spatial_out)

The forward and the backward both walk bounded chunks of output channels (``conv_chunks``): each
chunk's rows of W_seed are regenerated (``dense_block``), convolved with the input channels
they see, and dropped. A chunk never crosses a group boundary in the wrong way: it is either a
run of whole groups (a grouped conv of its own) or rows inside one group (a plain conv on that
group's input channels). Autograd through the chunked F.conv calls would save every chunk's
weight for the backward; ``SeededConvFunction`` regenerates them instead, and takes dx and
dbeta from one ``convolution_backward`` per chunk (dbeta = <dy, conv(x, W)> = <W, dW>). That
backward is made of differentiable ops on dy, x and beta, so second derivatives (a graph
through the gradient) are exact; only such a graph keeps its chunks' weights alive.
Forward-mode AD and torch.func's transforms (grad, vmap, jvp, jacrev, hessian), which the
Function cannot serve, run ``seeded_conv_composite``: the same chunks as plain differentiable
ops, whose weights autograd then keeps (W_seed whole, in chunks) for a backward.

Under torch.compile (and dispatch modes, subclasses) the two loops run as the registered ops
``lottalora::seeded_conv_fwd`` / ``lottalora::seeded_conv_bwd``, a block's and a geometry's
words for arguments, as the linear op's (``custom_ops``), but for a backward that builds a
graph outside compiling, which runs the differentiable loops.

The adapter, beta's broadcasting, the bias and padding modes are the module's
(``lottalora.nn.conv``): ordinary autograd on small tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbone import BackboneBlock, BackboneSpec, backbone_block
from ..backbone.stream_v2 import ROW_SPAN
from .autograd import needs_composite
from .backend import dense_block
from .checks import check_input_dtype, check_param_dtype
from .custom_ops import block_from_words, block_words, direct_call_ok
from .precision import accumulation_dtype, autocast_cast, autocast_cast_dtype, autocast_enabled, autocast_off

# W_seed values one chunk holds at most (the torch backend's block budget): a chunk's weight
# and its generator's temporaries stay a few MiB whatever the layer's size.
CONV_CHUNK_VALUES = 1 << 20

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass(frozen=True)
class ConvGeometry:
    """What a seeded conv needs besides its backbone: the input channels, kernel, stride,
    dilation and groups (padding is applied before the op)."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    @property
    def row_width(self) -> int:
        """Values per output channel of W_seed: in_channels // groups * prod(kernel_size)."""
        return self.in_channels // self.groups * math.prod(self.kernel_size)

    def weight_shape(self, rows: int) -> tuple[int, ...]:
        """The conv weight shape of ``rows`` output channels."""
        return (rows, self.in_channels // self.groups, *self.kernel_size)


@dataclass(frozen=True)
class ConvChunk:
    """Output channels [rows[0], rows[1]) of W_seed, convolved with input channels
    [channels[0], channels[1]) as a conv of ``groups`` groups."""

    rows: tuple[int, int]
    channels: tuple[int, int]
    groups: int


def conv_chunks(geometry: ConvGeometry, values: int | None = None) -> list[ConvChunk]:
    """The chunks of output channels, each of at most ``values`` W_seed values (default
    ``CONV_CHUNK_VALUES``, read at the call; at least one row): runs of whole groups where a
    group fits, else rows inside one group."""
    values = CONV_CHUNK_VALUES if values is None else values
    out_g = geometry.out_channels // geometry.groups
    in_g = geometry.in_channels // geometry.groups
    rows_per_chunk = max(1, values // geometry.row_width)
    if rows_per_chunk >= ROW_SPAN:  # whole spans of stream v2's rows: none generated twice
        rows_per_chunk -= rows_per_chunk % ROW_SPAN
    if out_g <= rows_per_chunk:
        step = rows_per_chunk // out_g
        return [ConvChunk((g0 * out_g, g1 * out_g), (g0 * in_g, g1 * in_g), g1 - g0)
                for g0 in range(0, geometry.groups, step) for g1 in [min(geometry.groups, g0 + step)]]
    return [ConvChunk((g * out_g + r0, g * out_g + min(out_g, r0 + rows_per_chunk)), (g * in_g, (g + 1) * in_g), 1)
            for g in range(geometry.groups) for r0 in range(0, out_g, rows_per_chunk)]


def conv_weight_chunk(spec: BackboneSpec, geometry: ConvGeometry, chunk: ConvChunk, dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    """W_seed's rows ``chunk.rows`` as a conv weight (rows, C // groups, *kernel_size) in ``dtype``."""
    block = dense_block(spec, rows=chunk.rows, device=device)
    return block.to(dtype).view(geometry.weight_shape(chunk.rows[1] - chunk.rows[0]))


def check_conv_dtypes(x: torch.Tensor, params: dict[str, torch.Tensor | None] | None = None) -> None:
    """lottalora.Linear's dtype rule (``checks``) for a seeded conv: TypeError unless x is in a
    dtype the torch backend computes in (the convs are torch's on every device, float64 too) and
    each of ``params`` (name: tensor or None) has x's dtype, inside autocast once autocast has
    cast both, as nn.Conv's must (compared, not cast: the conv's own ops cast them)."""
    dtype = torch.get_autocast_dtype(x.device.type) if autocast_enabled(x.device.type) else None
    check_input_dtype(x, "torch")
    for name, t in (params or {}).items():
        if t is not None:
            check_param_dtype(name, autocast_cast_dtype(t, dtype), autocast_cast_dtype(x, dtype))


def _conv(x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry, groups: int) -> torch.Tensor:
    return _CONV[len(geometry.kernel_size)](x, weight, None, geometry.stride, 0, geometry.dilation, groups)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format nn.Conv's output and input gradient take for ``x``: channels_last (or
    its 3-D form) for an input laid out so, else contiguous."""
    for dims, fmt in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x.dim() == dims and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
            return fmt
    return torch.contiguous_format


def _output_size(x: torch.Tensor, geometry: ConvGeometry) -> list[int]:
    # At least 0: an input smaller than the dilated kernel then reaches F.conv, which refuses it
    # by name as nn.Conv does (a negative size failed first, in torch.empty).
    return [max(0, (size - d * (k - 1) - 1) // s + 1)
            for size, k, s, d in zip(x.shape[2:], geometry.kernel_size, geometry.stride, geometry.dilation)]


def _forward(x: torch.Tensor, beta: torch.Tensor, spec: BackboneSpec, geometry: ConvGeometry) -> torch.Tensor:
    """beta * conv(x, W_seed) in x's accumulation dtype, chunk by chunk."""
    compute = accumulation_dtype(x.dtype)
    xc = x.to(compute)
    out = torch.empty((x.shape[0], geometry.out_channels, *_output_size(x, geometry)), dtype=compute,
                      device=x.device, memory_format=_memory_format(x))
    for chunk in conv_chunks(geometry):
        w = conv_weight_chunk(spec, geometry, chunk, compute, x.device)
        out[:, chunk.rows[0]:chunk.rows[1]] = _conv(xc[:, chunk.channels[0]:chunk.channels[1]], w, geometry,
                                                    chunk.groups)
    return out.mul_(beta.to(compute))


def seeded_conv_composite(x: torch.Tensor, beta: torch.Tensor, spec: BackboneSpec,
                          geometry: ConvGeometry) -> torch.Tensor:
    """beta * conv(x, W_seed) in x's accumulation dtype from plain differentiable ops, chunk by
    chunk as ``_forward``: what forward-mode AD and torch.func's transforms run (they refuse
    ``SeededConvFunction``, whose forward takes ctx). Autograd keeps every chunk's weight for the
    backward, so it runs only where the Function cannot."""
    compute = accumulation_dtype(x.dtype)
    xc = x.to(compute)
    parts = [_conv(xc[:, chunk.channels[0]:chunk.channels[1]], conv_weight_chunk(spec, geometry, chunk, compute,
                                                                                 x.device), geometry, chunk.groups)
             for chunk in conv_chunks(geometry)]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)) * beta.to(compute)


def _input_grad(dy: torch.Tensor, x: torch.Tensor, beta: torch.Tensor, spec: BackboneSpec, geometry: ConvGeometry,
                need_dx: bool, need_dbeta: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx in x's dtype or None, dbeta in beta's dtype and shape or None), chunk by chunk, from
    differentiable ops on dy, x and beta."""
    compute = accumulation_dtype(x.dtype)
    xc, dy = x.to(compute), dy.to(compute)
    # In x's memory format, as nn.Conv's (channels_last survives F.pad): the registered op's fake
    # says the same, and a compiled graph asserts the strides it was told.
    dx = (torch.empty(xc.shape, dtype=compute, device=x.device, memory_format=_memory_format(x)).zero_()
          if need_dx else None)
    dbeta = torch.zeros((), dtype=compute, device=x.device)
    b = beta.to(compute)
    for chunk in conv_chunks(geometry):
        w = conv_weight_chunk(spec, geometry, chunk, compute, x.device)
        (c0, c1), (o0, o1) = chunk.channels, chunk.rows
        x_part = xc[:, c0:c1]
        dx_part, dw, _ = torch.ops.aten.convolution_backward(
            dy[:, o0:o1].contiguous(), x_part, w, None, list(geometry.stride), [0] * len(geometry.stride),
            list(geometry.dilation), False, [0] * len(geometry.stride), chunk.groups,
            [need_dx, need_dbeta, False])
        if need_dx:
            dx[:, c0:c1] += dx_part
        if need_dbeta:
            dbeta += dw.reshape(-1) @ w.reshape(-1)
    dx = dx.mul_(b).to(x.dtype) if need_dx else None
    dbeta = dbeta.reshape(beta.shape).to(beta.dtype) if need_dbeta else None
    return dx, dbeta


def geometry_words(geometry: ConvGeometry) -> list[int]:
    """[in_channels, out_channels, groups, dims, *kernel_size, *stride, *dilation]: a geometry as
    the ops' schema takes it."""
    return [geometry.in_channels, geometry.out_channels, geometry.groups, len(geometry.kernel_size),
            *geometry.kernel_size, *geometry.stride, *geometry.dilation]


def geometry_from_words(words: list[int]) -> ConvGeometry:
    """The geometry ``geometry_words`` packed (SymInts specialized: a geometry is a constant of
    its graph, as a block is)."""
    in_channels, out_channels, groups, dims, *rest = map(int, words)
    if dims not in _CONV or len(rest) != 3 * dims:
        raise ValueError(f"geometry words must be what geometry_words gives, got {list(words)}")
    return ConvGeometry(in_channels, out_channels, tuple(rest[:dims]), tuple(rest[dims:2 * dims]),
                        tuple(rest[2 * dims:]), groups)


@torch.library.custom_op("lottalora::seeded_conv_fwd", mutates_args=())
def seeded_conv_fwd_op(x: torch.Tensor, beta: torch.Tensor, block: list[int], geometry: list[int]) -> torch.Tensor:
    """beta * conv(x, W_seed) (``_forward``) as a registered op: what torch.compile sees."""
    return _forward(x, beta, block_from_words(block).spec, geometry_from_words(geometry))


@seeded_conv_fwd_op.register_fake
def _(x, beta, block, geometry):
    g = geometry_from_words(geometry)
    return torch.empty((x.shape[0], g.out_channels, *_output_size(x, g)), dtype=accumulation_dtype(x.dtype),
                       device=x.device, memory_format=_memory_format(x))


@torch.library.custom_op("lottalora::seeded_conv_bwd", mutates_args=())
def seeded_conv_bwd_op(dy: torch.Tensor, x: torch.Tensor, beta: torch.Tensor, block: list[int], geometry: list[int],
                       need_dx: bool, need_dbeta: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``_input_grad`` as a registered op: (dx, or an empty tensor when not needed; dbeta, 0 when
    not needed)."""
    dx, dbeta = _input_grad(dy, x, beta, block_from_words(block).spec, geometry_from_words(geometry), need_dx,
                            need_dbeta)
    return (dx if dx is not None else x.new_empty((0,)),
            dbeta if dbeta is not None else torch.zeros_like(beta))


@seeded_conv_bwd_op.register_fake
def _(dy, x, beta, block, geometry, need_dx, need_dbeta):
    dx = (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x)) if need_dx
          else x.new_empty((0,)))
    return dx, torch.empty_like(beta)


class SeededConvFunction(torch.autograd.Function):
    """y = beta * conv(x, W_seed) in x's accumulation dtype; the backward regenerates the chunks.

    Eager calls on plain tensors, and every backward that builds a graph outside compiling, run
    the chunk loops themselves (the backward's are differentiable: second derivatives hold);
    anything else (torch.compile, dispatch modes, subclasses) runs them as the registered ops
    ``lottalora::seeded_conv_fwd`` / ``_bwd``, which a compiled graph holds as two opaque calls
    (first-order only: the ops have no derivative of their own)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: torch.Tensor, spec: BackboneSpec, geometry: ConvGeometry) -> torch.Tensor:
        if direct_call_ok(x, beta):
            out = _forward(x, beta, spec, geometry)
        else:
            out = seeded_conv_fwd_op(x, beta, block_words(BackboneBlock.whole(spec)), geometry_words(geometry))
        ctx.save_for_backward(x, beta)
        ctx.spec, ctx.geometry = spec, geometry
        return out

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, beta = ctx.saved_tensors
        spec, geometry = ctx.spec, ctx.geometry
        need_dx, need_dbeta = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_dx or need_dbeta):
            return None, None, None, None
        # A backward that builds a graph (create_graph=True) runs the differentiable loops even
        # under a dispatch mode: the registered op has no derivative (compiled graphs take
        # first-order backwards, through the op). Autocast off: a backward inside it keeps the
        # forward's float32 accumulation (dbeta's dot product would run in the autocast dtype).
        with autocast_off(dy.device.type):
            if direct_call_ok(dy, x, beta) or (torch.is_grad_enabled() and not torch.compiler.is_compiling()):
                dx, dbeta = _input_grad(dy, x, beta, spec, geometry, need_dx, need_dbeta)
            else:
                dx, dbeta = seeded_conv_bwd_op(dy, x, beta, block_words(BackboneBlock.whole(spec)),
                                               geometry_words(geometry), need_dx, need_dbeta)
        return (dx if need_dx else None), (dbeta if need_dbeta else None), None, None


def seeded_conv(x: torch.Tensor, spec: BackboneSpec, geometry: ConvGeometry, beta: torch.Tensor) -> torch.Tensor:
    """beta * conv(x, W_seed) with autograd (x already padded; see the module docstring for
    shapes), in x's accumulation dtype (float32 for bfloat16 / float16 / float32 inputs, float64
    for float64). On the meta device it only infers the output's shape. Under torch.compile it
    is two registered ops (forward, input gradient) in the graph: no graph break. Inside
    torch.autocast, x is cast to the autocast dtype as nn.Conv's input is (float64 stays), and
    the op then runs with autocast off, accumulating in float32 as outside it: eager and
    compiled calls compute the same thing. Forward-mode AD and torch.func's transforms run
    ``seeded_conv_composite``. A non-floating x is refused (``check_conv_dtypes``)."""
    check_conv_dtypes(x)
    if autocast_enabled(x.device.type):
        x = autocast_cast(x, torch.get_autocast_dtype(x.device.type))
        with autocast_off(x.device.type):
            return _seeded_conv(x, spec, geometry, beta)
    return _seeded_conv(x, spec, geometry, beta)


def _seeded_conv(x: torch.Tensor, spec: BackboneSpec, geometry: ConvGeometry, beta: torch.Tensor) -> torch.Tensor:
    if x.device.type == "meta":
        weight = torch.empty(geometry.weight_shape(geometry.out_channels), device="meta",
                             dtype=accumulation_dtype(x.dtype))
        return beta.to(weight.dtype) * _conv(x.to(weight.dtype), weight, geometry, geometry.groups)
    if needs_composite(direct_call_ok(x, beta), x, beta):
        return seeded_conv_composite(x, beta, spec, geometry)
    return SeededConvFunction.apply(x, beta, spec, geometry)


def seeded_conv_ref(x: torch.Tensor, spec: BackboneSpec, geometry: ConvGeometry, beta: torch.Tensor) -> torch.Tensor:
    """beta * conv(x, W_seed) in float64 with the whole W_seed dense: the readable reference
    (tests only: it materialises the backbone)."""
    w = backbone_block(spec, device=x.device).double().view(geometry.weight_shape(geometry.out_channels))
    return beta.double() * _conv(x.double(), w, geometry, geometry.groups)
