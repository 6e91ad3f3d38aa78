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

# Calls per generation pass: bounds its int64 temporaries (about 150 bytes a call) at a size whose
# torch ops still amortise their fixed cost.
CALLS_PER_PASS = 1 << 15

_CACHE: dict[tuple, torch.Tensor] = {}


def _index(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``values`` as an int64 tensor on ``device``, made once per values and device: a tensor made
    from Python data on every call would be a host-to-device copy each time, which a CUDA graph
    cannot capture. Made outside inference mode, as ``byte_sign_table``'s callers need."""
    key = ("index", values, device)
    if key not in _CACHE:
        with torch.inference_mode(False):
            _CACHE[key] = torch.tensor(values, dtype=torch.int64, device=device)
    return _CACHE[key]


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


def _call_bytes(seed: int, stream: int, spans_o: tuple[int, int], spans_i: tuple[int, int],
                residues: tuple[int, ...], device: torch.device, little_endian: bool) -> torch.Tensor:
    """Packed signs of the rows o = 64 O + 8 p + a with a in ``residues`` (O in spans_o, every
    p) by columns [128 spans_i[0], 128 spans_i[1]): uint8 (O, p, a, 16 * spans), from the calls
    (O, I, a, c) of those residues alone (a row takes only the calls of its own a).

    Byte j of a call (its bits 8 j .. 8 j + 7) is half h = j mod 2 of half-word p = j div 2:
    row block p's signs for q = 8 h .. 8 h + 7. Gathering that byte from the 8 calls c = 0..7
    into one int64 (byte c) and transposing it as an 8 x 8 bit matrix gives byte q' = the
    row's signs for columns 8 (8 h + q') + c, c = 0..7: the row's bytes in column order. On a
    little-endian host the regrouping is byte views and one permute (faster than shifting bytes
    out; ``little_endian=False`` takes the arithmetic route, any host)."""
    n_o, n_i, n_a = spans_o[1] - spans_o[0], spans_i[1] - spans_i[0], len(residues)
    span_o = torch.arange(*spans_o, dtype=torch.int64, device=device)[:, None, None, None]
    span_i = torch.arange(*spans_i, dtype=torch.int64, device=device)[None, :, None, None]
    if n_a == RES:
        res_o = torch.arange(RES, dtype=torch.int64, device=device)
    else:
        res_o = _index(residues, device)
    res_o = res_o[None, None, :, None]
    res_i = torch.arange(RES, dtype=torch.int64, device=device)[None, None, None, :]
    shape = (n_o, n_i, n_a, RES)  # calls (O, I, a, c)
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
        grouped = call_bytes.view(n_o, n_i, n_a, RES, _P_BLOCKS, 2).permute(0, 4, 2, 1, 5, 3).contiguous()
        packed = grouped.view(torch.int64)  # (O, p, a, I, h, 1): byte c = call c's byte 2 p + h
        row_bytes = _transpose8(packed).view(torch.uint8)  # (O, p, a, I, h, 8): byte q'
    else:
        call_bytes = (words[..., None] >> shifts[:4]) & 0xFF  # (O, I, a, c, word, byte)
        grouped = call_bytes.reshape(n_o, n_i, n_a, RES, _P_BLOCKS, 2).permute(0, 4, 2, 1, 5, 3)
        packed = (grouped << shifts).sum(-1)  # (O, p, a, I, h): byte c at bits 8 c
        row_bytes = ((_transpose8(packed)[..., None] >> shifts) & 0xFF).to(torch.uint8)
    return row_bytes.reshape(n_o, _P_BLOCKS, n_a, n_i * _BYTES_PER_SPAN_ROW)


def span_bytes(seed: int, stream: int, spans_o: tuple[int, int], spans_i: tuple[int, int],
               device: torch.device, little_endian: bool = sys.byteorder == "little") -> torch.Tensor:
    """Packed signs of whole call spans: rows [64 spans_o[0], 64 spans_o[1]) by columns
    [128 spans_i[0], 128 spans_i[1]) as a uint8 tensor (rows, 16 * spans), bit k of byte j set
    when column 8 j + k of the row has sign -1. One pass over every call of the spans (callers
    bound its size: ``sign_bytes`` does)."""
    n_o, n_i = spans_o[1] - spans_o[0], spans_i[1] - spans_i[0]
    if n_o <= 0 or n_i <= 0:  # an empty block (a tensor-parallel rank with no rows or columns)
        shape = (max(n_o, 0) * ROW_SPAN, max(n_i, 0) * _BYTES_PER_SPAN_ROW)
        return torch.empty(shape, dtype=torch.uint8, device=device)
    packed = _call_bytes(seed, stream, spans_o, spans_i, tuple(range(RES)), device, little_endian)
    return packed.reshape(n_o * ROW_SPAN, n_i * _BYTES_PER_SPAN_ROW)  # row 64 O + 8 p + a


def _partial_span_bytes(seed: int, stream: int, rows: tuple[int, int], spans_i: tuple[int, int],
                        device: torch.device, little_endian: bool) -> torch.Tensor:
    """Packed signs of rows [rows[0], rows[1]) inside one row span: only the calls of the rows'
    residues a = o mod 8 (one row: 8 calls per column span, 1/8 of the span's)."""
    span_o = rows[0] // ROW_SPAN
    lo, hi = rows[0] - span_o * ROW_SPAN, rows[1] - span_o * ROW_SPAN
    residues = tuple(range(RES)) if hi - lo >= RES else tuple(sorted({r % RES for r in range(lo, hi)}))
    packed = _call_bytes(seed, stream, (span_o, span_o + 1), spans_i, residues, device, little_endian)[0]
    if len(residues) == RES:
        return packed.reshape(ROW_SPAN, -1)[lo:hi]
    p = _index(tuple(r // RES for r in range(lo, hi)), device)
    a = _index(tuple(residues.index(r % RES) for r in range(lo, hi)), device)
    return packed[p, a]


def _row_pieces(rows: tuple[int, int]) -> list[tuple[int, int]]:
    """``rows`` split at row-span boundaries into a head and a tail inside one span each and
    whole spans between (any of them may be absent)."""
    r0, r1 = rows
    head_end = min(r1, -(-r0 // ROW_SPAN) * ROW_SPAN)
    tail_start = max(head_end, r1 // ROW_SPAN * ROW_SPAN)
    return [(a, b) for a, b in ((r0, head_end), (head_end, tail_start), (tail_start, r1)) if a < b]


def sign_bytes(seed: int, stream: int, rows: tuple[int, int], col_spans: tuple[int, int],
               device: torch.device, little_endian: bool = sys.byteorder == "little") -> torch.Tensor:
    """Packed signs of rows [rows[0], rows[1]) (any rows) by whole column spans: uint8
    (rows, 16 * spans), as ``span_bytes`` lays them out.

    A row range makes only the calls its rows use: whole row spans all of theirs, a partial span
    at either end only its rows' residues. Passes of at most ``CALLS_PER_PASS`` calls (row spans
    by column spans) bound the int64 temporaries, whatever the block's shape."""
    n_cols = col_spans[1] - col_spans[0]
    shape = (max(0, rows[1] - rows[0]), max(0, n_cols) * _BYTES_PER_SPAN_ROW)
    if shape[0] == 0 or shape[1] == 0:
        return torch.empty(shape, dtype=torch.uint8, device=device)
    passes = []
    for r0, r1 in _row_pieces(rows):
        whole = r0 % ROW_SPAN == 0 and r1 % ROW_SPAN == 0
        calls = ROW_SPAN if whole else RES * min(RES, r1 - r0)  # per row span and column span
        n_i = min(n_cols, max(1, CALLS_PER_PASS // calls))
        row_step = ROW_SPAN * max(1, CALLS_PER_PASS // (calls * n_i)) if whole else r1 - r0
        for a in range(r0, r1, row_step):
            for i0 in range(col_spans[0], col_spans[1], n_i):
                passes.append(((a, min(r1, a + row_step)), (i0, min(col_spans[1], i0 + n_i)), whole))
    out = torch.empty(shape, dtype=torch.uint8, device=device) if len(passes) > 1 else None
    for (a, b), spans_i, whole in passes:
        if whole:
            piece = span_bytes(seed, stream, (a // ROW_SPAN, b // ROW_SPAN), spans_i, device, little_endian)
        else:
            piece = _partial_span_bytes(seed, stream, (a, b), spans_i, device, little_endian)
        if out is None:
            return piece
        c0 = (spans_i[0] - col_spans[0]) * _BYTES_PER_SPAN_ROW
        out[a - rows[0]: b - rows[0], c0: c0 + piece.shape[1]] = piece
    return out


def write_signs(out: torch.Tensor, seed: int, stream: int, rows: tuple[int, int], cols: tuple[int, int],
                scale: float = 1.0) -> None:
    """out[:] = scale * signs[rows, cols] (out: rows x cols, its own dtype and device). The
    table lookup writes straight into ``out`` when the block is whole spans of a contiguous
    tensor, so each value is written once."""
    col0, col1 = cols
    col_spans = (col0 // COL_SPAN, -(-col1 // COL_SPAN))
    packed = sign_bytes(seed, stream, rows, col_spans, out.device)
    table = byte_sign_table(out.dtype, out.device, scale)
    first, width = col0 - col_spans[0] * COL_SPAN, col1 - col0
    if first == 0 and width == packed.shape[1] * 8 and out.is_contiguous():
        torch.index_select(table, 0, packed.to(torch.int32).reshape(-1), out=out.view(-1, 8))
    else:  # only the bytes that hold the columns are looked up
        index = packed[:, first // 8: -(-(first + width) // 8)].to(torch.int32)
        values = torch.nn.functional.embedding(index, table).reshape(packed.shape[0], -1)
        out.copy_(values[:, first % 8: first % 8 + width])
