"""The torch backend: the seeded linear layer's forward and input gradient in plain PyTorch.

Same contract as the Triton kernels (fp32 accumulation, the same formulas), on any device,
without Triton. Float64 inputs are computed in float64 (for gradcheck).

Stream v2: the signs are made once per call as packed bytes (1 bit per weight, 1/32 of a
float32 weight; ``stream_v2.sign_bytes``), then expanded to float in column blocks of about
2^20 values for each matrix product, so peak memory stays well below the dense weight. Up to
``V2_TABLE_GEMV_MAX_M`` rows no float weight is made at all (a table-lookup product). The
forward can hand its packed signs to the backward (``keep_signs``): one generation per training
step instead of two, the lever that brings a CPU training step near stored-weight speed; they
live as long as the autograd graph, like any saved activation. ``beta * std`` multiplies the
product once, as the kernels' epilogue does.

Stream v1: W_seed is regenerated in column blocks of about 2^20 values per product, its values
rounded to the input dtype as the kernels round their tiles.

The loops (``_blocked_product``, ``_forward_epilogue``, ``_blocked_bwd_dx``) take the weight as a
sequence of column blocks, so ``lottalora.sharded`` runs the same code on one block of a bigger
backbone (its blocks from its own generator, its own block size).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lottalora_kernels.allocation import new_output

from . import stream_v2
from .stream import BackboneSpec, backbone_block, backbone_signs

V1_BLOCK_VALUES = 1 << 20
V2_BLOCK_VALUES = 1 << 20
_V1_SPAN_COLS = 4  # stream v1 draws 4 columns per Philox call, v2 128: blocks start on those spans
_V2_SPAN_COLS = 128
_V2_BYTE_ROWS = 1024  # rows per packed-byte generation pass: bounds its int64 temporaries (~5 MiB at 4096 columns)
# Up to this many rows, stream v2's forward never makes float weights: it looks up byte-wise
# partial sums of x (a table-lookup GEMV, 1.5x faster than generating signs at batch 1 on a
# 2-core CPU); past it one float product per block of signs is cheaper.
V2_TABLE_GEMV_MAX_M = 4
_TABLE_ROWS = 1024  # rows of W per lookup pass: bounds the (rows, in / 8) gathered sums

# A weight W as the loops take it: ((c0, c1), W[:, c0:c1] in the compute dtype) pairs covering
# its columns in order, each block made when the loop reaches it and dropped after.
ColumnBlocks = Iterable[tuple[tuple[int, int], torch.Tensor]]

_BIT_TABLES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _column_blocks(spec: BackboneSpec, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None,
                   values: int | None = None):
    """Column ranges [c0, c1) that cover ``cols`` (default: all of W_seed's), each holding about
    ``values`` weights of the ``rows`` (default: all; ``values`` default: the version's
    V*_BLOCK_VALUES). All but the first start on a span of the stream's Philox calls."""
    rows = (0, spec.out_features) if rows is None else rows
    cols = (0, spec.in_features) if cols is None else cols
    if values is None:
        values = V2_BLOCK_VALUES if spec.version == 2 else V1_BLOCK_VALUES
    span = _V2_SPAN_COLS if spec.version == 2 else _V1_SPAN_COLS
    width = max(span, (values // max(1, rows[1] - rows[0])) // span * span)
    start = cols[0]
    while start < cols[1]:
        stop = min(cols[1], (start // span) * span + width)
        yield start, stop
        start = stop


def packed_signs(spec: BackboneSpec, device) -> torch.Tensor:
    """A v2 layer's signs packed 8 columns to a byte: uint8 (out_features, 16 * spans)."""
    n_spans = -(-spec.in_features // _V2_SPAN_COLS)
    out = torch.empty((spec.out_features, n_spans * 16), dtype=torch.uint8, device=device)
    for r0 in range(0, spec.out_features, _V2_BYTE_ROWS):
        r1 = min(r0 + _V2_BYTE_ROWS, spec.out_features)
        out[r0:r1] = stream_v2.sign_bytes(spec.seed, spec.stream, (r0, r1), (0, n_spans), device)
    return out


def _unpack_block(packed: torch.Tensor, cols: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """Signs of columns [c0, c1) (c0 a multiple of 8) from packed bytes, in ``dtype``."""
    c0, c1 = cols
    index = packed[:, c0 // 8: -(-c1 // 8)].to(torch.int32)
    signs = torch.nn.functional.embedding(index, stream_v2.byte_sign_table(dtype, packed.device))
    return signs.reshape(packed.shape[0], -1)[:, : c1 - c0]


def _stream_block(spec: BackboneSpec, rows: tuple[int, int] | None, cols: tuple[int, int], dtype: torch.dtype,
                  device) -> torch.Tensor:
    """W_seed[rows, cols] (rows None: all) as the products take it, from the PyTorch stream, in
    the compute dtype: v2's exact signs (``_product_scale`` applies the std), v1's values rounded
    to ``dtype`` as the kernels round their tiles."""
    cdt = _compute_dtype(dtype)
    if spec.version == 2:
        return backbone_signs(spec, rows, cols, device, cdt)
    return backbone_block(spec, rows, cols, device).to(dtype).to(cdt)


def _weight_blocks(spec: BackboneSpec, dtype: torch.dtype, device, packed: torch.Tensor | None):
    """(cols, block) pairs covering W: v2's signs (exact) from ``packed``, or v1's W_seed rounded
    to ``dtype`` as the kernels round their tiles; blocks in the compute dtype."""
    cdt = _compute_dtype(dtype)
    for cols in _column_blocks(spec):
        if spec.version == 2:
            yield cols, _unpack_block(packed, cols, cdt)
        else:
            yield cols, _stream_block(spec, None, cols, dtype, device)


def _product_scale(spec: BackboneSpec) -> float:
    """What multiplies x @ block^T to give x @ W_seed^T: v2's std (its blocks are signs)."""
    return spec.std if spec.version == 2 else 1.0


def _bit_table(dtype: torch.dtype, device) -> torch.Tensor:
    """[8, 256]: entry (k, v) is bit k of v; made once per dtype and device (as
    ``stream_v2.byte_sign_table`` keeps its signs: a batch-1 forward would otherwise rebuild it)."""
    key = (dtype, torch.device(device))
    if key not in _BIT_TABLES:
        # Made outside inference mode even when first asked for inside it: an inference tensor
        # could never be saved for backward by a later call that autograd records.
        with torch.inference_mode(False):
            bits = (torch.arange(256, device=device)[None, :] >> torch.arange(8, device=device)[:, None]) & 1
            _BIT_TABLES[key] = bits.to(dtype)
    return _BIT_TABLES[key]


def _v2_table_gemv(x: torch.Tensor, spec: BackboneSpec, packed: torch.Tensor) -> torch.Tensor:
    """x @ W_signs^T for a few rows of x without float weights (stream v2), in x's dtype.

    W_signs = 1 - 2 bits, so x @ W_signs^T = sum(x) - 2 x @ bits^T. Columns go 8 to a byte:
    for each row m of x and byte position j, a table of the 256 sums
    T[m, j, v] = sum_k x[m, 8 j + k] bit_k(v) is one small matmul, and each weight row's masked
    sum is a lookup of one entry per byte. x is zero-padded to the packed width.
    """
    m, k = x.shape
    padded = torch.zeros((m, packed.shape[1] * 8), dtype=x.dtype, device=x.device)
    padded[:, :k] = x
    tables = (padded.view(m, -1, 8) @ _bit_table(x.dtype, x.device)).reshape(m, -1)  # (m, bytes * 256)
    offsets = torch.arange(packed.shape[1], device=x.device) * 256
    out = torch.empty((m, spec.out_features), dtype=x.dtype, device=x.device)
    for r0 in range(0, spec.out_features, _TABLE_ROWS):
        index = packed[r0: r0 + _TABLE_ROWS].long() + offsets
        for row in range(m):
            out[row, r0: r0 + _TABLE_ROWS] = tables[row].take(index).sum(-1)
    return padded.sum(-1, keepdim=True) - 2 * out


def _blocked_product(x: torch.Tensor, blocks: ColumnBlocks, n_out: int) -> torch.Tensor:
    """x @ W^T in the compute dtype: x (M, k), W (n_out, k) given as its column ``blocks``."""
    cdt = _compute_dtype(x.dtype)
    acc = torch.zeros((x.shape[0], n_out), dtype=cdt, device=x.device)
    for (c0, c1), block in blocks:
        acc.addmm_(x[:, c0:c1].to(cdt), block.T)
    return acc


def _forward_epilogue(
    acc: torch.Tensor, spec: BackboneSpec, xa: torch.Tensor | None, lora_B: torch.Tensor | None,
    beta: torch.Tensor, bias: torch.Tensor | None, scale: float, dtype: torch.dtype,
) -> torch.Tensor:
    """y = beta * std * acc + scale * xa @ lora_B^T + bias (std: v2's; 1 for v1), summed in acc's
    dtype and rounded to ``dtype`` once; acc: (M, N) from ``_blocked_product``, xa: (M, rank)."""
    cdt = acc.dtype
    out = acc * (beta.to(cdt) * _product_scale(spec))
    if xa is not None:
        out = out + (xa.to(cdt) @ lora_B.to(cdt).T) * scale
    if bias is not None:
        out = out + bias.to(cdt)
    return out.to(dtype)


def _blocked_bwd_dx(
    dy: torch.Tensor, blocks: ColumnBlocks, n_in: int, spec: BackboneSpec, dy_b: torch.Tensor | None,
    lora_A: torch.Tensor | None, beta: torch.Tensor, scale: float, x_for_dbeta: torch.Tensor | None,
    need_dx: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx, dbeta) of ``seeded_linear_ref_bwd_dx`` for W (N, n_in) given as its column ``blocks``:
    dy (M, N), dx (M, n_in) in dy's dtype, dbeta 0-dim in the compute dtype."""
    cdt = _compute_dtype(dy.dtype)
    dy_c = dy.to(cdt)
    w_scale = _product_scale(spec)
    dx = new_output((dy.shape[0], n_in), cdt, dy.device) if need_dx else None
    dbeta = torch.zeros((), dtype=cdt, device=dy.device) if x_for_dbeta is not None else None
    for (c0, c1), block in blocks:
        grad_block = dy_c @ block
        if dbeta is not None:
            dbeta += (grad_block * x_for_dbeta[:, c0:c1].to(cdt)).sum()
        if dx is not None:
            torch.mul(grad_block, beta.to(cdt) * w_scale, out=dx[:, c0:c1])
    if dbeta is not None:
        dbeta *= w_scale
    if dx is not None:
        if dy_b is not None:
            dx += (dy_b.to(cdt) @ lora_A.to(cdt)) * scale
        dx = dx.to(dy.dtype)
    return dx, dbeta


def seeded_linear_ref_fwd(
    x: torch.Tensor, spec: BackboneSpec, xa: torch.Tensor | None, lora_B: torch.Tensor | None,
    beta: torch.Tensor, bias: torch.Tensor | None, scale: float, keep_signs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y, packed): y = beta * x @ W_seed^T + scale * xa @ lora_B^T + bias, x: (M, in), y: (M, out);
    packed: v2's packed signs for the backward when ``keep_signs`` (else None)."""
    cdt = _compute_dtype(x.dtype)
    packed = packed_signs(spec, x.device) if spec.version == 2 else None
    if packed is not None and 0 < x.shape[0] <= V2_TABLE_GEMV_MAX_M:  # no rows: the blocked product
        acc = _v2_table_gemv(x.to(cdt), spec, packed)
    else:
        acc = _blocked_product(x, _weight_blocks(spec, x.dtype, x.device, packed), spec.out_features)
    y = _forward_epilogue(acc, spec, xa, lora_B, beta, bias, scale, x.dtype)
    return y, (packed if keep_signs else None)


def seeded_linear_ref_bwd_dx(
    dy: torch.Tensor, spec: BackboneSpec, dy_b: torch.Tensor | None, lora_A: torch.Tensor | None,
    beta: torch.Tensor, scale: float, x_for_dbeta: torch.Tensor | None = None, need_dx: bool = True,
    packed: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """dx = beta * dy @ W_seed + scale * dy_b @ lora_A and dbeta = <x, dy @ W_seed>.

    dy: (M, out); packed: the forward's v2 packed signs, or None to generate them. Returns
    (dx (M, in) or None, dbeta as a 0-dim tensor or None).
    """
    if spec.version == 2 and packed is None:
        packed = packed_signs(spec, dy.device)
    blocks = _weight_blocks(spec, dy.dtype, dy.device, packed)
    return _blocked_bwd_dx(dy, blocks, spec.in_features, spec, dy_b, lora_A, beta, scale, x_for_dbeta, need_dx)
