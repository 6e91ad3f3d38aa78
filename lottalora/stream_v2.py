"""Stream version 2 in PyTorch: the twin of ``lottalora_kernels.stream_v2`` (docs/backbone.md).

The weight at (o, i) is a sign: +1 when its bit is 0, -1 when it is 1, exact in every dtype;
``W_seed = sign * std`` with the std applied by the caller. Write o = 64 O + 8 p + a and
i = 128 I + 8 q + c (a, c < 8; p < 8; q < 16). Its bit is bit ``16 p + q`` of the 128 bits
(word 0's bit 0 first) of the Philox4x32-10 call with key (seed_lo, seed_hi) and counter
(64 I + 8 a + c, O, stream_lo, stream_hi). One call serves 128 weights.
"""

from __future__ import annotations

import sys

import torch

from lottalora_kernels import stream_spec as spec

from .philox import philox4x32

ROW_SPAN, COL_SPAN, RES = spec.V2_ROW_SPAN, spec.V2_COL_SPAN, spec.V2_RESIDUE
_P_BLOCKS, _Q_BLOCKS = ROW_SPAN // RES, COL_SPAN // RES  # 8 and 16
_BIT_MASKS: dict[torch.device, torch.Tensor] = {}


def _bit_masks(device: torch.device) -> torch.Tensor:
    if device not in _BIT_MASKS:
        _BIT_MASKS[device] = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8, device=device)
    return _BIT_MASKS[device]


def _little_endian_bytes(words: torch.Tensor) -> torch.Tensor:
    """(..., 4) uint32 words held in int64 -> (..., 16) uint8, each word's least significant byte
    first, on any host byte order."""
    if sys.byteorder == "little":
        return words.to(torch.int32).view(torch.uint8)  # free: a reinterpretation
    shifts = torch.arange(0, 32, 8, device=words.device)
    return ((words[..., None] >> shifts) & 0xFF).to(torch.uint8).flatten(-2)


def span_bits(seed: int, stream: int, spans_o: tuple[int, int], spans_i: tuple[int, int],
              device: torch.device) -> torch.Tensor:
    """The sign bits of whole call spans: rows [64 spans_o[0], 64 spans_o[1]) and columns
    [128 spans_i[0], 128 spans_i[1]) as a bool tensor (True: -1), rows x columns."""
    n_o, n_i = spans_o[1] - spans_o[0], spans_i[1] - spans_i[0]
    span_o = torch.arange(*spans_o, dtype=torch.int64, device=device)[:, None, None, None]
    span_i = torch.arange(*spans_i, dtype=torch.int64, device=device)[None, :, None, None]
    res_o = torch.arange(RES, dtype=torch.int64, device=device)[None, None, :, None]
    res_i = torch.arange(RES, dtype=torch.int64, device=device)[None, None, None, :]
    shape = (n_o, n_i, RES, RES)
    stream_lo, stream_hi = spec.split_u64(stream)
    counter = (
        (span_i * (RES * RES) + res_o * RES + res_i).expand(shape),
        span_o.expand(shape),
        torch.full(shape, stream_lo, dtype=torch.int64, device=device),
        torch.full(shape, stream_hi, dtype=torch.int64, device=device),
    )
    words = torch.stack(philox4x32(spec.split_u64(seed), counter), dim=-1)  # (O, I, a, c, word)
    # Bit n = 32 word + 8 byte + b of a call: its bytes in order, then each byte's bits.
    bits = (_little_endian_bytes(words)[..., None] & _bit_masks(device)) != 0  # (O, I, a, c, 16, 8)
    bits = bits.reshape(n_o, n_i, RES, RES, _P_BLOCKS, _Q_BLOCKS)  # n = 16 p + q
    # (O, I, a, c, p, q) -> rows 64 O + 8 p + a, columns 128 I + 8 q + c
    return bits.permute(0, 4, 2, 1, 5, 3).reshape(n_o * ROW_SPAN, n_i * COL_SPAN)


def sign_bits(seed: int, stream: int, rows: tuple[int, int], cols: tuple[int, int],
              device: torch.device) -> torch.Tensor:
    """bits[rows, cols] (True: -1): the whole spans that cover the block, trimmed (a view)."""
    (row0, row1), (col0, col1) = rows, cols
    spans_o = (row0 // ROW_SPAN, -(-row1 // ROW_SPAN))
    spans_i = (col0 // COL_SPAN, -(-col1 // COL_SPAN))
    bits = span_bits(seed, stream, spans_o, spans_i, device)
    r, c = row0 - spans_o[0] * ROW_SPAN, col0 - spans_i[0] * COL_SPAN
    return bits[r: r + row1 - row0, c: c + col1 - col0]
