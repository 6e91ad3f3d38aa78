"""A seeded layer's state_dict entry "_extra_state": everything that makes its function besides
its tensors (the backbone's identity, rank, alpha, use_rslora), as one small int64 tensor.

Layouts: layout 1 (lottalora 0.1.0, 8 values) carries the backbone only; layout 2 appends what
else changes the layer's function. Index 0 is the backbone stream version in both; index 8 names
the layout from layout 2 on. Both stay readable (tests/fixtures).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

from lottalora_kernels.stream import spec as stream_spec

from ..backbone import BackboneSpec
from .options import check_alpha

EXTRA_STATE_LAYOUT = 2
_LAYOUT_LENGTHS = {8: 1, 12: 2}


def upgrade_legacy_beta(state: dict, key: str) -> None:
    """lottalora 0.1 stored beta 0-dim; it is (1,) now (FSDP2 refuses 0-dim parameters): reshape
    ``state[key]`` in place when it is such a beta."""
    if isinstance(state.get(key), torch.Tensor) and state[key].dim() == 0:
        state[key] = state[key].reshape(1)


def _float64_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


def _bits_float64(word: int) -> float:
    return struct.unpack("<d", struct.pack("<q", word))[0]


def extra_state(spec: BackboneSpec, rank: int, alpha: float, use_rslora: bool) -> torch.Tensor:
    """A layer's state_dict entry "_extra_state", layout 2: int64 [stream version, seed lo/hi,
    stream lo/hi, init code, in_features, out_features, layout (2), rank, alpha's float64 bit
    pattern, use_rslora (0 or 1)]."""
    seed_lo, seed_hi, stream_lo, stream_hi = stream_spec.words(spec.seed, spec.stream)
    return torch.tensor([spec.version, seed_lo, seed_hi, stream_lo, stream_hi,
                         stream_spec.INIT_CODES[spec.init], spec.in_features, spec.out_features,
                         EXTRA_STATE_LAYOUT, rank, _float64_bits(alpha), int(use_rslora)],
                        dtype=torch.int64)


@dataclass(frozen=True)
class LayerState:
    """A decoded "_extra_state". rank, alpha and use_rslora are None in layout 1, which does not
    carry them (a layer loading it keeps its own alpha and use_rslora)."""

    spec: BackboneSpec
    rank: int | None
    alpha: float | None
    use_rslora: bool | None


def decode_extra_state(state: object) -> LayerState:
    """Check an "_extra_state" value of either layout and decode it; ValueError if it is not one."""
    if not isinstance(state, torch.Tensor) or state.dtype != torch.int64 or state.dim() != 1 \
            or state.shape[0] not in _LAYOUT_LENGTHS:
        described = (f"{state.dtype} tensor of shape {tuple(state.shape)}" if isinstance(state, torch.Tensor)
                     else type(state).__name__)
        raise ValueError(f"lottalora.Linear extra state must be an int64 tensor of 8 (layout 1) or 12 "
                         f"(layout 2) values, got a {described}")
    words = [int(v) for v in state.tolist()]
    version, seed_lo, seed_hi, stream_lo, stream_hi, init_code, in_f, out_f = words[:8]
    if version not in stream_spec.SUPPORTED_STREAM_VERSIONS:
        raise ValueError(
            f"backbone stream version {version} is not supported by this build "
            f"(supported: {stream_spec.SUPPORTED_STREAM_VERSIONS})"
        )
    if not 0 <= init_code < len(stream_spec.INITS) or \
            stream_spec.INITS[init_code] not in stream_spec.VERSION_INITS[version]:
        raise ValueError(f"unknown init code {init_code} for stream version {version} in state "
                         f"(known: {stream_spec.VERSION_INITS[version]})")
    for name, word in (("seed", seed_lo), ("seed", seed_hi), ("stream", stream_lo), ("stream", stream_hi)):
        if not 0 <= word <= 0xFFFFFFFF:
            raise ValueError(f"corrupt {name} word {word} in state (each must be in [0, 2**32))")
    try:
        spec = BackboneSpec(stream_spec.join_u64(seed_lo, seed_hi), stream_spec.join_u64(stream_lo, stream_hi),
                            in_f, out_f,
                            stream_spec.INITS[init_code], version)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"corrupt backbone in state: {exc}") from None
    if len(words) == 8:
        return LayerState(spec, None, None, None)
    layout, rank, alpha_bits, rslora = words[8:]
    if layout != EXTRA_STATE_LAYOUT:
        raise ValueError(f"extra state layout {layout} of 12 values is not one this build reads "
                         f"(it reads layout {EXTRA_STATE_LAYOUT})")
    if rank < 0:
        raise ValueError(f"corrupt rank {rank} in state")
    if rslora not in (0, 1):
        raise ValueError(f"corrupt use_rslora word {rslora} in state (0 or 1)")
    alpha = _bits_float64(alpha_bits)
    try:
        check_alpha(alpha, zero_ok=rank == 0)
    except ValueError as exc:
        raise ValueError(f"corrupt alpha in state: {exc}") from None
    return LayerState(spec, rank, alpha, bool(rslora))
