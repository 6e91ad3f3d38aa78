"""The seeded op's two halves registered as torch.library custom ops, and the call that picks
between the registered op and its implementation.

``torch.compile`` sees two opaque ops with known output shapes (the fake implementations)
instead of tracing into Python launchers or the PyTorch stream (Inductor would otherwise try to
compile the whole generator). A block of a backbone travels as thirteen ints (``block_words``):
a schema ``int`` is 64-bit signed, and a seed or stream may use all 64 bits, so each travels as
two 32-bit words (``lottalora_kernels.stream.spec.words``).

The last word is ``FAKE_CONTRACT``. Inductor keeps compiled graphs on disk across processes,
keyed by the graph's code, which holds the ops' arguments but not the fakes' source: a graph
compiled while a fake gave other output shapes would be reused, and would fail on the real
op's outputs (seen when the packed signs of a narrow block shrank to its own bytes). The
contract word is a constant in every graph, so bumping it with any change of the fakes' shapes
(or strides) retires the graphs cached before.

In eager mode on plain tensors (``direct_call_ok``) the implementations are called directly:
the registered op would only add its dispatch to the host time of every call.
"""

from __future__ import annotations

import functools

import torch

from lottalora_kernels.stream import spec as stream_spec

from ..backbone import BackboneBlock, BackboneSpec
from . import backend as backends
from .precision import accumulation_dtype
from .torch_backend import packed_shape

# Bumped with every change of the output shapes or strides the fakes give, the seeded convs'
# included (see the module's docstring). 3: a channels_last conv input gives channels_last outputs.
FAKE_CONTRACT = 3


def block_words(block: BackboneBlock) -> list[int]:
    """[seed_lo, seed_hi, stream_lo, stream_hi, version, init code, out_features, in_features,
    row0, row1, col0, col1, FAKE_CONTRACT]: the block and its layer as the ops' schema takes them."""
    s = block.spec
    return [*stream_spec.words(s.seed, s.stream), s.version, stream_spec.INIT_CODES[s.init], s.out_features,
            s.in_features, *block.rows, *block.cols, FAKE_CONTRACT]


@functools.lru_cache(maxsize=4096)
def _block(words: tuple[int, ...]) -> BackboneBlock:
    # A layer calls the op with the same block every step: validated once.
    if len(words) != 13 or words[-1] != FAKE_CONTRACT:
        raise ValueError(f"block words must be the 13 ints block_words gives (contract {FAKE_CONTRACT}), got "
                         f"{list(words)}: a graph compiled by another lottalora version?")
    seed_lo, seed_hi, stream_lo, stream_hi, version, init, out_features, in_features, r0, r1, c0, c1, _ = words
    s = BackboneSpec(stream_spec.join_u64(seed_lo, seed_hi), stream_spec.join_u64(stream_lo, stream_hi),
                     in_features, out_features, stream_spec.INITS[init], version)
    return BackboneBlock(s, (r0, r1), (c0, c1))


def block_from_words(words: list[int]) -> BackboneBlock:
    """The block ``block_words`` packed. Under ``torch.compile`` a word may arrive as a SymInt
    (dynamo makes an int dynamic when a frame recompiles for another value, as a second layer's
    seed): ``int`` specializes it, since a block is a constant of its graph."""
    return _block(tuple(map(int, words)))


def seeded_linear_fwd_impl(
    x: torch.Tensor, lora_A: torch.Tensor | None, lora_B: torch.Tensor | None, beta: torch.Tensor,
    bias: torch.Tensor | None, lora_x: torch.Tensor | None, block: list[int], scale: float, backend: str,
    keep_signs: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``backend.forward`` with tensors for its optional results: (y (M, block out), xa (M, rank)
    or (M, 0) without an adapter, packed signs or an empty uint8 tensor)."""
    y, xa, packed = backends.forward(backend, x, block_from_words(block), lora_A, lora_B, beta, bias, scale,
                                     keep_signs, lora_x)
    return (y, xa if xa is not None else x.new_empty((x.shape[0], 0)),
            packed if packed is not None else x.new_empty((0,), dtype=torch.uint8))


seeded_linear_fwd_op = torch.library.custom_op("lottalora::seeded_linear_fwd", mutates_args=())(seeded_linear_fwd_impl)


@seeded_linear_fwd_op.register_fake
def _(x, lora_A, lora_B, beta, bias, lora_x, block, scale, backend, keep_signs):
    b = block_from_words(block)
    packed = packed_shape(b) if keep_signs and backends.hands_signs_to_backward(backend, b.spec.version) else (0,)
    rank = lora_A.shape[0] if lora_A is not None else 0
    return (x.new_empty((x.shape[0], b.out_features)), x.new_empty((x.shape[0], rank)),
            x.new_empty(packed, dtype=torch.uint8))


def seeded_linear_bwd_dx_impl(
    dy: torch.Tensor, dy_b: torch.Tensor | None, lora_A: torch.Tensor | None, beta: torch.Tensor,
    x_for_dbeta: torch.Tensor | None, packed: torch.Tensor | None, block: list[int], scale: float, need_dx: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``backend.input_grad`` with tensors for its optional results: (dx (M, block in), or
    (0, block in) when not needed; dbeta 0-dim in the accumulation dtype, 0 without
    ``x_for_dbeta``)."""
    b = block_from_words(block)
    dx, dbeta = backends.input_grad(backend, dy, b, dy_b, lora_A, beta, scale, x_for_dbeta, need_dx, packed)
    if dx is None:
        dx = dy.new_empty((0, b.in_features))
    if dbeta is None:
        dbeta = torch.zeros((), device=dy.device)
    return dx, dbeta.to(accumulation_dtype(dy.dtype))


seeded_linear_bwd_dx_op = torch.library.custom_op("lottalora::seeded_linear_bwd_dx",
                                                  mutates_args=())(seeded_linear_bwd_dx_impl)


@seeded_linear_bwd_dx_op.register_fake
def _(dy, dy_b, lora_A, beta, x_for_dbeta, packed, block, scale, need_dx, backend):
    rows = dy.shape[0] if need_dx else 0
    return (dy.new_empty((rows, block_from_words(block).in_features)),
            dy.new_empty((), dtype=accumulation_dtype(dy.dtype)))


_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


# Looked up once: the eager path asks on every call.
_dispatch_stack_depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
_is_functorch_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
_is_compiling = torch.compiler.is_compiling


def direct_call_ok(*tensors: torch.Tensor | None) -> bool:
    """Whether the implementations may run without the registered ops: eager mode, no dispatch
    mode (fake tensors, functionalization), and plain tensors with values (not DTensor, a
    functorch wrapper nor a meta tensor). Anything else goes through the ops, which is what those
    systems see: on meta tensors the ops' fake implementations give the outputs' shapes."""
    if _dispatch_stack_depth is None or _is_functorch_wrapped is None or _is_compiling() or _dispatch_stack_depth():
        return False
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN_TENSOR_TYPES or t.is_meta or _is_functorch_wrapped(t)):
            return False
    return True


def run_forward(
    x: torch.Tensor, block: BackboneBlock, lora_A, lora_B, beta, bias, scale: float, backend: str, keep_signs: bool,
    lora_x: torch.Tensor | None, direct: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``backend.forward`` (``direct``) or the registered forward op: (y, xa or None, packed
    signs or None)."""
    if direct:
        return backends.forward(backend, x, block, lora_A, lora_B, beta, bias, scale, keep_signs, lora_x)
    y, xa, packed = seeded_linear_fwd_op(x, lora_A, lora_B, beta, bias, lora_x, block_words(block), scale, backend,
                                         keep_signs)
    return y, (xa if lora_A is not None else None), (packed if packed.numel() else None)


def run_input_grad(
    dy: torch.Tensor, block: BackboneBlock, dy_b, lora_A, beta, scale: float, x_for_dbeta, need_dx: bool,
    backend: str, packed: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``backend.input_grad`` or the registered input-gradient op, whichever ``direct_call_ok``
    allows: (dx or None, dbeta or None)."""
    if direct_call_ok(dy, dy_b, lora_A, beta, x_for_dbeta, packed):
        return backends.input_grad(backend, dy, block, dy_b, lora_A, beta, scale, x_for_dbeta, need_dx, packed)
    dx, dbeta = seeded_linear_bwd_dx_op(dy, dy_b, lora_A, beta, x_for_dbeta, packed, block_words(block), scale,
                                        need_dx, backend)
    return (dx if need_dx else None), (dbeta if x_for_dbeta is not None else None)
