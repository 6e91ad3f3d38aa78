"""Stream version 2 in PyTorch: the twin of ``lottalora_kernels.stream.v2`` (docs/backbone.md).

The weight at (o, i) is a sign: +1 when its bit is 0, -1 when it is 1, exact in every dtype;
``W_seed = sign * std`` with the std applied by the caller. Write o = 64 O + 8 p + a and
i = 128 I + 8 q + c (a, c < 8; p < 8; q < 16). Its bit is bit ``16 p + q`` of the 128 bits
(word 0's bit 0 first) of the Philox4x32-10 call with key (seed_lo, seed_hi) and counter
(64 I + 8 a + c, O, stream_lo, stream_hi). One call serves 128 weights.

The CPU-friendly form is ``sign_bytes``: row o's signs packed 8 columns to a byte, in column
order (bit k of byte j is column 8 j + k). A row's 16 bytes in a span take bit q of the
half-words of 8 calls (c = 0..7): an 8 x 8 bit-matrix transpose per 8 bytes, done on int64
lanes, turns the calls' bytes into the row's. From bytes, one table lookup gives the signs in
any dtype (``write_signs``), or a matrix-vector product without any float weights
(``lottalora.ops.torch_backend``).
"""

from __future__ import annotations

import sys

import torch

from lottalora_kernels.stream import spec

from .philox import philox4x32

ROW_SPAN, COL_SPAN, RES = spec.V2_ROW_SPAN, spec.V2_COL_SPAN, spec.V2_RESIDUE
_P_BLOCKS = ROW_SPAN // RES  # 8 row blocks (p) per span
_BYTES_PER_SPAN_ROW = COL_SPAN // 8  # 16: a row's 128 signs in a span, 8 to a byte

# Hacker's Delight's 8 x 8 bit-matrix transpose on a 64-bit word (bit 8 r + c <-> bit 8 c + r).
# Arithmetic right shifts of int64 only smear the sign bit into positions these masks clear.
_TRANSPOSE_STEPS = ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0))

_CACHE: dict[tuple, torch.Tensor] = {}


def _byte_shifts(device: torch.device) -> torch.Tensor:
    key = ("shifts", device)
    if key not in _CACHE:
        _CACHE[key] = torch.arange(0, 64, 8, device=device)
    return _CACHE[key]


def byte_sign_table(dtype: torch.dtype, device: torch.device, scale: float = 1.0) -> torch.Tensor:
    """[256, 8]: row b holds ``scale`` times the signs of byte b's bits in ``dtype``, least
    significant bit first (scale * +-1 is exact: it only flips the sign of ``scale``)."""
    key = ("signs", dtype, device, scale)
    if key not in _CACHE:
        bits = (torch.arange(256, device=device)[:, None] >> torch.arange(8, device=device)[None, :]) & 1
        _CACHE[key] = torch.where(bits == 1, -scale, scale).to(dtype)
    return _CACHE[key]


def _transpose8(x: torch.Tensor) -> torch.Tensor:
    for shift, mask in _TRANSPOSE_STEPS:
        t = (x ^ (x >> shift)) & mask
        x = x ^ t ^ (t << shift)
    return x


def span_bytes(seed: int, stream: int, spans_o: tuple[int, int], spans_i: tuple[int, int],
               device: torch.device, little_endian: bool = sys.byteorder == "little") -> torch.Tensor:
    """Packed signs of whole call spans: rows [64 spans_o[0], 64 spans_o[1]) by columns
    [128 spans_i[0], 128 spans_i[1]) as a uint8 tensor (rows, 16 * spans), bit k of byte j set
    when column 8 j + k of the row has sign -1.

    Byte j of a call (its bits 8 j .. 8 j + 7) is half h = j mod 2 of half-word p = j div 2:
    row block p's signs for q = 8 h .. 8 h + 7. Gathering that byte from the 8 calls c = 0..7
    into one int64 (byte c) and transposing it as an 8 x 8 bit matrix gives byte q' = the
    row's signs for columns 8 (8 h + q') + c, c = 0..7: the row's bytes in column order. On a
    little-endian host the regrouping is byte views and one permute (faster than shifting bytes
    out; ``little_endian=False`` takes the arithmetic route, any host)."""
    n_o, n_i = spans_o[1] - spans_o[0], spans_i[1] - spans_i[0]
    if n_o <= 0 or n_i <= 0:  # an empty block (a tensor-parallel rank with no rows or columns)
        shape = (max(n_o, 0) * ROW_SPAN, max(n_i, 0) * _BYTES_PER_SPAN_ROW)
        return torch.empty(shape, dtype=torch.uint8, device=device)
    span_o = torch.arange(*spans_o, dtype=torch.int64, device=device)[:, None, None, None]
    span_i = torch.arange(*spans_i, dtype=torch.int64, device=device)[None, :, None, None]
    res_o = torch.arange(RES, dtype=torch.int64, device=device)[None, None, :, None]
    res_i = torch.arange(RES, dtype=torch.int64, device=device)[None, None, None, :]
    shape = (n_o, n_i, RES, RES)  # calls (O, I, a, c)
    seed_lo, seed_hi, stream_lo, stream_hi = spec.words(seed, stream)
    counter = (
        (span_i * (RES * RES) + res_o * RES + res_i).expand(shape),
        span_o.expand(shape),
        torch.full(shape, stream_lo, dtype=torch.int64, device=device),
        torch.full(shape, stream_hi, dtype=torch.int64, device=device),
    )
    words = torch.stack(philox4x32((seed_lo, seed_hi), counter), dim=-1)  # (O, I, a, c, word)
    shifts = _byte_shifts(device)
    if little_endian:
        call_bytes = words.to(torch.int32).view(torch.uint8)  # (O, I, a, c, 16): byte j = bits 8 j..
        grouped = call_bytes.view(n_o, n_i, RES, RES, _P_BLOCKS, 2).permute(0, 4, 2, 1, 5, 3).contiguous()
        packed = grouped.view(torch.int64)  # (O, p, a, I, h, 1): byte c = call c's byte 2 p + h
        row_bytes = _transpose8(packed).view(torch.uint8)  # (O, p, a, I, h, 8): byte q'
    else:
        call_bytes = (words[..., None] >> shifts[:4]) & 0xFF  # (O, I, a, c, word, byte)
        grouped = call_bytes.reshape(n_o, n_i, RES, RES, _P_BLOCKS, 2).permute(0, 4, 2, 1, 5, 3)
        packed = (grouped << shifts).sum(-1)  # (O, p, a, I, h): byte c at bits 8 c
        row_bytes = ((_transpose8(packed)[..., None] >> shifts) & 0xFF).to(torch.uint8)
    return row_bytes.reshape(n_o * ROW_SPAN, n_i * _BYTES_PER_SPAN_ROW)


def sign_bytes(seed: int, stream: int, rows: tuple[int, int], col_spans: tuple[int, int],
               device: torch.device) -> torch.Tensor:
    """span_bytes for rows [rows[0], rows[1]) (any rows) and whole column spans."""
    spans_o = (rows[0] // ROW_SPAN, -(-rows[1] // ROW_SPAN))
    packed = span_bytes(seed, stream, spans_o, col_spans, device)
    first = rows[0] - spans_o[0] * ROW_SPAN
    return packed[first: first + rows[1] - rows[0]]


def write_signs(out: torch.Tensor, seed: int, stream: int, rows: tuple[int, int], cols: tuple[int, int],
                scale: float = 1.0) -> None:
    """out[:] = scale * signs[rows, cols] (out: rows x cols, its own dtype and device). The
    table lookup writes straight into ``out`` when the block is whole spans of a contiguous
    tensor, so each value is written once."""
    col0, col1 = cols
    col_spans = (col0 // COL_SPAN, -(-col1 // COL_SPAN))
    packed = sign_bytes(seed, stream, rows, col_spans, out.device)
    table = byte_sign_table(out.dtype, out.device, scale)
    first = col0 - col_spans[0] * COL_SPAN
    index = packed.to(torch.int32)
    if first == 0 and col1 - col0 == packed.shape[1] * 8 and out.is_contiguous():
        torch.index_select(table, 0, index.reshape(-1), out=out.view(-1, 8))
    else:
        values = torch.nn.functional.embedding(index, table).reshape(packed.shape[0], -1)
        out.copy_(values[:, first: first + col1 - col0])
