"""The torch backend: the seeded op's forward and input gradient in plain PyTorch, on any device.

Same contract as the Triton kernels (the accumulation dtype of ``precision``, the same
formulas), without Triton, on any block of a backbone (``BackboneBlock``: the whole layer, or
a tensor-parallel rank's rows or columns).

Stream v2: the block's signs are made once per call as packed bytes (1 bit per weight, 1/32 of a
float32 weight; ``stream_v2.sign_bytes``), then expanded to float in column blocks of about
2^20 values for each matrix product, so peak memory stays well below the dense weight. Up to
``V2_TABLE_GEMV_MAX_M`` rows no float weight is made at all (a table-lookup product). The
forward can hand its packed signs to the backward (``keep_signs``): one generation per training
step instead of two; they live as long as the autograd graph, like any saved activation.
``beta * std`` multiplies the product once, as the kernels' epilogue does.

Stream v1: W_seed is regenerated in column blocks of about 2^20 values per product, its values
rounded to the input dtype as the kernels round their tiles.

The loops (``blocked_product``, ``forward_epilogue``, ``blocked_input_grad``) take the weight as a
sequence of column blocks, so the Triton backend runs the same loops on blocks that the Triton
generator makes (``lottalora.ops.backend``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from lottalora_kernels.allocation import new_output
from lottalora_kernels.stream import spec as stream_spec

from ..backbone import BackboneBlock, BackboneSpec, backbone_block, backbone_signs, stream_v2
from .precision import accumulation_dtype

V1_BLOCK_VALUES = 1 << 20
V2_BLOCK_VALUES = 1 << 20
V1_SPAN_COLS = 4  # stream v1 draws 4 columns per Philox call, v2 128: blocks start on those spans
V2_SPAN_COLS = stream_spec.V2_COL_SPAN
V2_BYTES_PER_SPAN = V2_SPAN_COLS // 8
# Up to this many rows, stream v2's forward never makes float weights: it looks up byte-wise
# partial sums of x (a table-lookup GEMV, faster than generating signs at batch 1 on a CPU);
# past it one float product per block of signs is cheaper.
V2_TABLE_GEMV_MAX_M = 4
# The tables cost 256 sums per byte of x whatever the layer's rows: with fewer rows of W than
# that, the float product is the cheaper one (1 x 2^20 took 0.44 s through the tables;
# benchmarks/NOTES.md, "Torch backend at extreme shapes").
V2_TABLE_GEMV_MIN_OUT = 256
# The lookup GEMV's passes: at most _TABLE_VALUES table entries (x's 256 byte sums per byte
# position) and _TABLE_INDEX_VALUES gathered sums at once, whatever the layer's shape.
_TABLE_VALUES = 1 << 20
_TABLE_INDEX_VALUES = 1 << 19
_UNPACK_VALUES = 1 << 18  # signs per pass where a block's columns are off the byte grid

# A weight block as the loops take it: ((c0, c1), W[:, c0:c1] in the accumulation dtype) pairs
# covering its columns in order (columns of the block, from 0), each made when the loop reaches
# it and dropped after.
ColumnBlocks = Iterable[tuple[tuple[int, int], torch.Tensor]]

_SIGN_TABLES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def column_ranges(block: BackboneBlock, values: int | None = None) -> Iterator[tuple[int, int]]:
    """Backbone column ranges [c0, c1) that cover ``block.cols``, each holding about ``values``
    weights of the block's rows (default: the version's V*_BLOCK_VALUES). All but the first
    start on a span of the stream's Philox calls."""
    spec = block.spec
    if values is None:
        values = V2_BLOCK_VALUES if spec.version == 2 else V1_BLOCK_VALUES
    span = V2_SPAN_COLS if spec.version == 2 else V1_SPAN_COLS
    width = max(span, (values // max(1, block.out_features)) // span * span)
    start, stop = block.cols
    while start < stop:
        end = min(stop, (start // span) * span + width)
        yield start, end
        start = end


def _v2_span_range(cols: tuple[int, int]) -> tuple[int, int]:
    """The column spans (of 128) that cover ``cols``."""
    return cols[0] // V2_SPAN_COLS, -(-cols[1] // V2_SPAN_COLS)


def _byte_range(cols: tuple[int, int]) -> tuple[int, int]:
    """The packed bytes (8 columns each, counted from column 0) that hold ``cols``."""
    return cols[0] // 8, -(-cols[1] // 8)


def packed_signs(block: BackboneBlock, device) -> torch.Tensor:
    """A v2 block's signs packed 8 columns to a byte: uint8 (block rows, bytes), the bytes that
    hold the block's columns (the first starts at or before ``block.cols[0]``; ``unpack_signs``
    takes the offset into account). Only the calls of the block's rows are made
    (``stream_v2.sign_bytes``); a block narrower than its column spans keeps only its own bytes,
    generated in passes of rows so that the spans' other bytes never add up."""
    spec = block.spec
    spans = _v2_span_range(block.cols)
    b0, b1 = _byte_range(block.cols)
    b0, b1 = b0 - spans[0] * V2_BYTES_PER_SPAN, b1 - spans[0] * V2_BYTES_PER_SPAN
    if (b0, b1) == (0, (spans[1] - spans[0]) * V2_BYTES_PER_SPAN):
        return stream_v2.sign_bytes(spec.seed, spec.stream, block.rows, spans, device)
    out = torch.empty((block.out_features, b1 - b0), dtype=torch.uint8, device=device)
    r0, r1 = block.rows
    # Rows of one generation pass (a call per row and column span), on whole row spans.
    step = max(stream_v2.ROW_SPAN, stream_v2.CALLS_PER_PASS // (spans[1] - spans[0]) // stream_v2.ROW_SPAN
               * stream_v2.ROW_SPAN)
    start = r0
    while start < r1:
        stop = min(r1, start // stream_v2.ROW_SPAN * stream_v2.ROW_SPAN + step)
        piece = stream_v2.sign_bytes(spec.seed, spec.stream, (start, stop), spans, device)
        out[start - r0: stop - r0] = piece[:, b0:b1]
        start = stop
    return out


def packed_shape(block: BackboneBlock) -> tuple[int, int]:
    """The shape ``packed_signs`` returns for ``block``."""
    b0, b1 = _byte_range(block.cols)
    return block.out_features, b1 - b0


def _lead(block: BackboneBlock) -> int:
    """Columns between the first packed byte's first column and the block's first column."""
    return block.cols[0] % 8


def unpack_signs(packed: torch.Tensor, block: BackboneBlock, cols: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """Signs of the block's columns [c0, c1) (counted from the block's first column) from its
    packed bytes, in ``dtype``: (block rows, c1 - c0)."""
    first = _lead(block) + cols[0]
    width = cols[1] - cols[0]
    index = packed[:, first // 8: -(-(first + width) // 8)]
    table = stream_v2.byte_sign_table(dtype, packed.device)
    rows, looked_up = packed.shape[0], index.shape[1] * 8
    if first % 8 == 0 and looked_up == width:
        return torch.nn.functional.embedding(index.to(torch.int32), table).reshape(rows, width)
    # Columns off the byte grid: each row's lookup makes up to 14 columns too many (8 x too many
    # in a block one column wide), so the rows go in passes of bounded size.
    out = torch.empty((rows, width), dtype=dtype, device=packed.device)
    step = max(1, _UNPACK_VALUES // looked_up)
    for r0 in range(0, rows, step):
        values = torch.nn.functional.embedding(index[r0: r0 + step].to(torch.int32), table)
        out[r0: r0 + step] = values.reshape(-1, looked_up)[:, first % 8: first % 8 + width]
    return out


def stream_block(spec: BackboneSpec, rows: tuple[int, int], cols: tuple[int, int], dtype: torch.dtype,
                 device, signs: bool) -> torch.Tensor:
    """W_seed[rows, cols] (backbone coordinates) from the PyTorch stream in ``dtype``: stream v2's
    exact +-1 signs with ``signs``, else the values (v1's rounded to ``dtype``). A generator of
    ``weight_blocks``."""
    if signs:
        return backbone_signs(spec, rows, cols, device, dtype)
    return backbone_block(spec, rows, cols, device).to(dtype)


# generator(spec, rows, cols, dtype, device, signs) -> W_seed[rows, cols] (or v2's signs) in dtype.
Generator = Callable[[BackboneSpec, tuple[int, int], tuple[int, int], torch.dtype, torch.device, bool], torch.Tensor]


def weight_blocks(block: BackboneBlock, dtype: torch.dtype, device, packed: torch.Tensor | None = None,
                  generator: Generator | None = None, values: int | None = None) -> ColumnBlocks:
    """The block as the loops take it, in the accumulation dtype, a range of ``column_ranges`` at a
    time: stream v2's exact signs (from ``packed`` when given, else the ``generator``'s), or v1's
    W_seed rounded to ``dtype`` as the kernels round their tiles, then widened. ``generator``
    makes the chunks (the PyTorch stream by default; the Triton generator on a GPU)."""
    acc_dtype = accumulation_dtype(dtype)
    generator = generator or stream_block
    c0 = block.cols[0]
    for g0, g1 in column_ranges(block, values):
        local = (g0 - c0, g1 - c0)
        if block.spec.version == 2 and packed is not None:
            yield local, unpack_signs(packed, block, local, acc_dtype)
        elif block.spec.version == 2:
            yield local, generator(block.spec, block.rows, (g0, g1), acc_dtype, device, True)
        else:
            yield local, generator(block.spec, block.rows, (g0, g1), dtype, device, False).to(acc_dtype)


def product_scale(spec: BackboneSpec) -> float:
    """What multiplies x @ block^T to give x @ W_seed^T: v2's std (its blocks are signs)."""
    return spec.std if spec.version == 2 else 1.0


def _sign_table(dtype: torch.dtype, device) -> torch.Tensor:
    """[8, 256]: entry (k, v) is the sign of bit k of v (1 - 2 bit: +1 for 0, -1 for 1); made
    once per dtype and device (as ``stream_v2.byte_sign_table`` keeps its signs: a batch-1
    forward would otherwise rebuild it)."""
    key = (dtype, torch.device(device))
    if key not in _SIGN_TABLES:
        # Made outside inference mode even when first asked for inside it: an inference tensor
        # could never be saved for backward by a later call that autograd records.
        with torch.inference_mode(False):
            bits = (torch.arange(256, device=device)[None, :] >> torch.arange(8, device=device)[:, None]) & 1
            _SIGN_TABLES[key] = (1 - 2 * bits).to(dtype)
    return _SIGN_TABLES[key]


def _v2_table_gemv(x: torch.Tensor, block: BackboneBlock, packed: torch.Tensor) -> torch.Tensor:
    """x @ W_signs^T for a few rows of x without float weights (stream v2), in x's dtype.

    Columns go 8 to a byte: for each row m of x and byte position j, a table of the 256 signed
    sums T[m, j, v] = sum_k x[m, 8 j + k] (1 - 2 bit_k(v)) is one small matmul, and each weight
    row's product is a sum of one entry per byte. The entries are signed sums, not masked ones
    subtracted from sum(x) (which cancel where x has a mean far from 0). x is placed at the
    block's offset in the packed columns and zero-padded around it. Wide layers go in passes
    over byte positions (the tables are 256 sums per byte), tall ones in passes over rows.
    """
    m, k = x.shape
    lead = _lead(block)
    n_bytes = packed.shape[1]
    byte_step = max(1, _TABLE_VALUES // (256 * m))
    out = None
    for j0 in range(0, n_bytes, byte_step):
        j1 = min(n_bytes, j0 + byte_step)
        c0, c1 = max(0, 8 * j0 - lead), min(k, 8 * j1 - lead)  # the block's columns in these bytes
        padded = torch.zeros((m, (j1 - j0) * 8), dtype=x.dtype, device=x.device)
        padded[:, c0 + lead - 8 * j0: c1 + lead - 8 * j0] = x[:, c0:c1]
        tables = (padded.view(m, -1, 8) @ _sign_table(x.dtype, x.device)).reshape(m, -1)  # (m, bytes * 256)
        offsets = torch.arange(j1 - j0, device=x.device) * 256
        part = torch.empty((m, block.out_features), dtype=x.dtype, device=x.device)
        row_step = max(1, _TABLE_INDEX_VALUES // (j1 - j0))
        for r0 in range(0, block.out_features, row_step):
            index = packed[r0: r0 + row_step, j0:j1].long() + offsets
            for row in range(m):
                part[row, r0: r0 + row_step] = tables[row].take(index).sum(-1)
        out = part if out is None else out.add_(part)
    return out


def blocked_product(x: torch.Tensor, blocks: ColumnBlocks, n_out: int) -> torch.Tensor:
    """x @ W^T in the accumulation dtype: x (M, k), W (n_out, k) given as its column ``blocks``."""
    acc_dtype = accumulation_dtype(x.dtype)
    acc = torch.zeros((x.shape[0], n_out), dtype=acc_dtype, device=x.device)
    for (c0, c1), w in blocks:
        acc.addmm_(x[:, c0:c1].to(acc_dtype), w.T)
    return acc


def forward_epilogue(
    acc: torch.Tensor, spec: BackboneSpec, xa: torch.Tensor | None, lora_B: torch.Tensor | None,
    beta: torch.Tensor, bias: torch.Tensor | None, scale: float, dtype: torch.dtype,
) -> torch.Tensor:
    """y = beta * std * acc + scale * xa @ lora_B^T + bias (std: v2's; 1 for v1), summed in acc's
    dtype and rounded to ``dtype`` once; acc: (M, N) from ``blocked_product``, xa: (M, rank)."""
    acc_dtype = acc.dtype
    out = acc * (beta.to(acc_dtype) * product_scale(spec))
    # In place from here (the same roundings as new tensors): a layer with many rows has
    # outputs as large as its weight.
    if xa is not None:
        lora = xa.to(acc_dtype) @ lora_B.to(acc_dtype).T
        out += lora.mul_(scale)
    if bias is not None:
        out += bias.to(acc_dtype)
    return out.to(dtype)


def blocked_input_grad(
    dy: torch.Tensor, blocks: ColumnBlocks, n_in: int, spec: BackboneSpec, dy_b: torch.Tensor | None,
    lora_A: torch.Tensor | None, beta: torch.Tensor, scale: float, x_for_dbeta: torch.Tensor | None,
    need_dx: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx, dbeta) of ``seeded_linear_torch_bwd_dx`` for W (N, n_in) given as its column
    ``blocks``: dy (M, N), dx (M, n_in) in dy's dtype, dbeta 0-dim in the accumulation dtype."""
    acc_dtype = accumulation_dtype(dy.dtype)
    dy_acc = dy.to(acc_dtype)
    w_scale = product_scale(spec)
    dx = new_output((dy.shape[0], n_in), acc_dtype, dy.device) if need_dx else None
    dbeta = torch.zeros((), dtype=acc_dtype, device=dy.device) if x_for_dbeta is not None else None
    for (c0, c1), w in blocks:
        grad_block = dy_acc @ w
        if dbeta is not None:
            dbeta += (grad_block * x_for_dbeta[:, c0:c1].to(acc_dtype)).sum()
        if dx is not None:
            torch.mul(grad_block, beta.to(acc_dtype) * w_scale, out=dx[:, c0:c1])
    if dbeta is not None:
        dbeta *= w_scale
    if dx is not None:
        if dy_b is not None:
            dx += (dy_b.to(acc_dtype) @ lora_A.to(acc_dtype)) * scale
        dx = dx.to(dy.dtype)
    return dx, dbeta


def seeded_linear_torch_fwd(
    x: torch.Tensor, block: BackboneBlock, xa: torch.Tensor | None, lora_B: torch.Tensor | None,
    beta: torch.Tensor, bias: torch.Tensor | None, scale: float, keep_signs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y, packed): y = beta * x @ W_block^T + scale * xa @ lora_B^T + bias, x: (M, block in),
    y: (M, block out); packed: v2's packed signs for the backward when ``keep_signs`` (else
    None)."""
    spec = block.spec
    packed = packed_signs(block, x.device) if spec.version == 2 else None
    table = 0 < x.shape[0] <= V2_TABLE_GEMV_MAX_M and block.out_features >= V2_TABLE_GEMV_MIN_OUT
    if packed is not None and table:  # no rows: the blocked product
        acc = _v2_table_gemv(x.to(accumulation_dtype(x.dtype)), block, packed)
    else:
        acc = blocked_product(x, weight_blocks(block, x.dtype, x.device, packed), block.out_features)
    y = forward_epilogue(acc, spec, xa, lora_B, beta, bias, scale, x.dtype)
    return y, (packed if keep_signs else None)


def seeded_linear_torch_bwd_dx(
    dy: torch.Tensor, block: BackboneBlock, dy_b: torch.Tensor | None, lora_A: torch.Tensor | None,
    beta: torch.Tensor, scale: float, x_for_dbeta: torch.Tensor | None = None, need_dx: bool = True,
    packed: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """dx = beta * dy @ W_block + scale * dy_b @ lora_A and dbeta = <x, dy @ W_block>.

    dy: (M, block out); packed: the forward's v2 packed signs, or None to generate them. Returns
    (dx (M, block in) or None, dbeta as a 0-dim tensor or None).
    """
    if block.spec.version == 2 and packed is None:
        packed = packed_signs(block, dy.device)
    blocks = weight_blocks(block, dy.dtype, dy.device, packed)
    return blocked_input_grad(dy, blocks, block.in_features, block.spec, dy_b, lora_A, beta, scale, x_for_dbeta,
                              need_dx)
