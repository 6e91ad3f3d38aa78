"""The seeded linear op's two halves registered as torch.library custom ops, for both backends.

``torch.compile`` then sees two opaque ops with known output shapes (the fake implementations)
instead of tracing into Python launchers or the PyTorch stream (Inductor would otherwise try to
compile the whole generator on CPU), and the autograd Function in ``functional.py`` calls them.
Seeds and streams travel as four 32-bit words because a schema ``int`` is 64-bit signed and a
seed may use all 64 bits. ``backend`` is "triton" (the kernels, ``lottalora_kernels.dispatch``)
or "torch" (``reference``).

In eager mode on plain tensors the autograd Function calls the implementations directly
(``lottalora.backend.direct_call_ok``): the registered op would only add dispatch, about 40 us
of a layer call's host time (measured on CPU: 82 -> 38 us with the kernels mocked).
"""

from __future__ import annotations

import functools

import torch

from lottalora_kernels import stream_spec as spec

from . import reference
from .stream import BackboneSpec


def spec_words(s: BackboneSpec) -> list[int]:
    """[seed_lo, seed_hi, stream_lo, stream_hi], each in [0, 2^32)."""
    return [*spec.split_u64(s.seed), *spec.split_u64(s.stream)]


def _spec(words: list[int], in_features: int, out_features: int, init: str, version: int) -> BackboneSpec:
    return _cached_spec(tuple(words), in_features, out_features, init, version)


@functools.lru_cache(maxsize=4096)
def _cached_spec(words: tuple[int, ...], in_features: int, out_features: int, init: str, version: int):
    # A layer calls the op with the same identity every step: validate it once (CPU training of
    # small layers spends a visible share of a step building specs otherwise).
    return BackboneSpec(words[0] | (words[1] << 32), words[2] | (words[3] << 32), in_features, out_features,
                        init, version)


def keeps_signs(backend: str, version: int) -> bool:
    """Whether the forward can hand packed signs to the backward: the torch backend, stream v2
    (regenerating on GPU is cheaper than holding them)."""
    return backend == "torch" and version == 2


def _packed_shape(in_features: int, out_features: int) -> tuple[int, int]:
    return out_features, 16 * -(-in_features // 128)


def seeded_linear_fwd_impl(
    x: torch.Tensor, lora_A: torch.Tensor | None, lora_B: torch.Tensor | None, beta: torch.Tensor,
    bias: torch.Tensor | None, words: list[int], out_features: int, init: str, version: int, scale: float,
    backend: str, keep_signs: bool, lora_x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y (M, out_features) = beta * x @ W_seed^T + scale * xa @ lora_B^T + bias, xa, packed signs);
    x and lora_x (the adapter's input, x when None): (M, in); lora_A: (rank, in) or None.
    xa = lora_x @ lora_A^T (M, rank) in x's dtype, as the LoRA term used it, for the backward
    ((M, 0) without LoRA). The packed signs (uint8, ``reference.packed_signs``) are returned for
    the backward when ``keep_signs`` and ``keeps_signs(backend, version)``, else an empty tensor."""
    s = _spec(words, x.shape[1], out_features, init, version)
    if backend == "torch":
        xa = (lora_x if lora_x is not None else x) @ lora_A.T if lora_A is not None else None
        y, packed = reference.seeded_linear_ref_fwd(x, s, xa, lora_B, beta, bias, scale,
                                                    keep_signs=keep_signs and keeps_signs(backend, version))
    else:
        from lottalora_kernels.dispatch import seeded_linear_fwd

        y, xa = seeded_linear_fwd(x, seed=s.seed, stream=s.stream, version=s.version, init=s.init,
                                  out_features=out_features, lora_A=lora_A, lora_B=lora_B, beta=beta, bias=bias,
                                  scale=scale, lora_x=lora_x)
        packed = None
    return (y, xa if xa is not None else x.new_empty((x.shape[0], 0)),
            packed if packed is not None else x.new_empty((0,), dtype=torch.uint8))


seeded_linear_fwd_op = torch.library.custom_op("lottalora::seeded_linear_fwd", mutates_args=())(seeded_linear_fwd_impl)


@seeded_linear_fwd_op.register_fake
def _(x, lora_A, lora_B, beta, bias, words, out_features, init, version, scale, backend, keep_signs, lora_x=None):
    packed = _packed_shape(x.shape[1], out_features) if keep_signs and keeps_signs(backend, version) else (0,)
    rank = lora_A.shape[0] if lora_A is not None else 0
    return (x.new_empty((x.shape[0], out_features)), x.new_empty((x.shape[0], rank)),
            x.new_empty(packed, dtype=torch.uint8))


def _dbeta_dtype(dy: torch.Tensor) -> torch.dtype:
    return torch.float64 if dy.dtype == torch.float64 else torch.float32


def seeded_linear_bwd_dx_impl(
    dy: torch.Tensor, dy_b: torch.Tensor | None, lora_A: torch.Tensor | None, beta: torch.Tensor,
    x_for_dbeta: torch.Tensor | None, words: list[int], in_features: int, init: str, version: int, scale: float,
    need_dx: bool, backend: str, packed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx (M, in_features), dbeta scalar: float64 for float64 dy, else float32); dx is empty
    (0, in) when not needed and dbeta is 0 when ``x_for_dbeta`` is None (custom ops return
    tensors, not None). ``packed``: the forward's packed signs (torch backend), or None."""
    s = _spec(words, in_features, dy.shape[1], init, version)
    if backend == "torch":
        dx, dbeta = reference.seeded_linear_ref_bwd_dx(dy, s, dy_b, lora_A, beta, scale, x_for_dbeta, need_dx,
                                                       packed)
    else:
        from lottalora_kernels.dispatch import seeded_linear_bwd_dx

        dx, dbeta = seeded_linear_bwd_dx(dy, seed=s.seed, stream=s.stream, version=s.version, init=s.init,
                                         in_features=in_features, dy_b=dy_b, lora_A=lora_A, beta=beta, scale=scale,
                                         x_for_dbeta=x_for_dbeta, need_dx=need_dx)
    if dx is None:
        dx = dy.new_empty((0, in_features))
    if dbeta is None:
        dbeta = torch.zeros((), device=dy.device)
    return dx, dbeta.to(_dbeta_dtype(dy))


seeded_linear_bwd_dx_op = torch.library.custom_op("lottalora::seeded_linear_bwd_dx",
                                                  mutates_args=())(seeded_linear_bwd_dx_impl)


@seeded_linear_bwd_dx_op.register_fake
def _(dy, dy_b, lora_A, beta, x_for_dbeta, words, in_features, init, version, scale, need_dx, backend, packed=None):
    rows = dy.shape[0] if need_dx else 0
    return dy.new_empty((rows, in_features)), dy.new_empty((), dtype=_dbeta_dtype(dy))
