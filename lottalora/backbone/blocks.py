"""Any block of ``W_seed`` from the PyTorch stream: ``backbone_block`` and ``backbone_signs``.

They regenerate a block on any device without Triton, bit-exact with the Triton tile generators
(definition: ``docs/backbone.md``). Each stream version's twin lives in its own module
(``stream_v1``, ``stream_v2``); this one validates the block and dispatches by version.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import stream_v1, stream_v2
from .spec import BackboneSpec

_CHUNK_VALUES = 1 << 20
# Version 2 makes one Philox call per 128 values, so its chunks are larger: each op of the
# PyTorch Philox then runs on enough calls to amortise its fixed cost.
_V2_CHUNK_VALUES = 1 << 22


def _check_block(spec_: BackboneSpec, rows, cols) -> tuple[tuple[int, int], tuple[int, int]]:
    row0, row1 = rows if rows is not None else (0, spec_.out_features)
    col0, col1 = cols if cols is not None else (0, spec_.in_features)
    if not (0 <= row0 <= row1 <= spec_.out_features and 0 <= col0 <= col1 <= spec_.in_features):
        raise ValueError(
            f"block rows={row0, row1} cols={col0, col1} is outside the "
            f"{spec_.out_features} x {spec_.in_features} backbone"
        )
    return (row0, row1), (col0, col1)


def _row_chunks(rows: tuple[int, int], width: int, granule: int, values: int = _CHUNK_VALUES):
    """Row ranges of about ``values`` values each for rows ``width`` values wide (aligned to
    ``granule`` rows), so temporaries stay bounded and in cache (faster than one pass over a
    large block)."""
    step = max(granule, (values // max(1, width)) // granule * granule)
    start = rows[0]
    while start < rows[1]:
        stop = min(rows[1], (start // granule) * granule + step)
        yield start, stop
        start = stop


def _output(rows, cols, device, dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
    shape = (rows[1] - rows[0], cols[1] - cols[0])
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape or out.dtype != dtype or out.device != device:
        got = (f"{tuple(out.shape)} {out.dtype} on {out.device}" if isinstance(out, torch.Tensor)
               else type(out).__name__)
        raise ValueError(f"out must be a {shape} {dtype} tensor on {device}, got {got}")
    return out


def _v2_block(spec_: BackboneSpec, rows, cols, device, dtype: torch.dtype, scale: float,
              out: torch.Tensor | None = None) -> torch.Tensor:
    out = _output(rows, cols, device, dtype, out)
    # A row's packed signs take 16 bytes per column span whatever its width: a narrow block's
    # chunks are bounded by those bytes as much as by its values.
    spans = -(-cols[1] // stream_v2.COL_SPAN) - cols[0] // stream_v2.COL_SPAN
    width = max(cols[1] - cols[0], 16 * spans)
    for r0, r1 in _row_chunks(rows, width, stream_v2.ROW_SPAN, _V2_CHUNK_VALUES):
        stream_v2.write_signs(out[r0 - rows[0]: r1 - rows[0]], spec_.seed, spec_.stream, (r0, r1), cols, scale)
    return out


def backbone_signs(spec_: BackboneSpec, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """The +-1 signs of a version-2 backbone block (``W_seed = signs * spec.std``), in ``dtype``
    (written into ``out`` when given: a tensor of the block's shape, ``dtype`` and device)."""
    if spec_.version != 2:
        raise ValueError(f"backbone_signs needs a stream version 2 spec, got version {spec_.version}")
    rows, cols = _check_block(spec_, rows, cols)
    device = torch.device(device) if device is not None else (out.device if out is not None else torch.device("cpu"))
    return _v2_block(spec_, rows, cols, device, dtype, 1.0, out)


def backbone_block(
    spec_: BackboneSpec, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None,
    device: torch.device | str | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``W_seed[rows[0]:rows[1], cols[0]:cols[1]]`` as a float32 tensor (default: all of it), new
    or written into ``out`` (a float32 tensor of the block's shape on ``device``)."""
    rows, cols = _check_block(spec_, rows, cols)
    device = torch.device(device) if device is not None else (out.device if out is not None else torch.device("cpu"))
    if spec_.version == 2:
        return _v2_block(spec_, rows, cols, device, torch.float32, spec_.std, out)  # +-std: exact
    out = _output(rows, cols, device, torch.float32, out)
    groups = -(-cols[1] // 4) - cols[0] // 4  # v1 draws whole groups of 4 columns
    for r0, r1 in _row_chunks(rows, 4 * groups, 1):
        out[r0 - rows[0]: r1 - rows[0]] = stream_v1.block_values(spec_.seed, spec_.stream, spec_.init,
                                                                 spec_.value_scale, (r0, r1), cols, device)
    return out


@dataclass(frozen=True)
class BackboneBlock:
    """Rows [rows[0], rows[1]) x columns [cols[0], cols[1]) of a layer's ``W_seed``: what one call
    of the seeded op multiplies by. The whole layer is ``BackboneBlock.whole(spec)``; a
    tensor-parallel rank's block is its rows (column-parallel) or its columns (row-parallel).
    ``out_features`` and ``in_features`` are the block's own sizes."""

    spec: BackboneSpec
    rows: tuple[int, int]
    cols: tuple[int, int]

    def __post_init__(self) -> None:
        if not isinstance(self.spec, BackboneSpec):
            raise TypeError(f"spec must be a lottalora.BackboneSpec, got {type(self.spec).__name__} {self.spec!r}")
        _check_range("rows", self.rows, self.spec.out_features)
        _check_range("cols", self.cols, self.spec.in_features)

    @classmethod
    def whole(cls, spec: BackboneSpec) -> BackboneBlock:
        """All of ``spec``'s W_seed."""
        if torch.compiler.is_compiling():  # a traced lru_cache makes dynamo warn; the block is a constant there
            return cls(spec, (0, spec.out_features), (0, spec.in_features))
        return _whole_block(spec)

    @property
    def out_features(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def in_features(self) -> int:
        return self.cols[1] - self.cols[0]

    @property
    def is_whole(self) -> bool:
        return self.rows == (0, self.spec.out_features) and self.cols == (0, self.spec.in_features)


def _check_range(name: str, value, limit: int) -> None:
    if not (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"{name} must be a (start, stop) tuple of ints, got {value!r}")
    if not 0 <= value[0] <= value[1] <= limit:
        raise ValueError(f"{name} must satisfy 0 <= start <= stop <= {limit}, got {value!r}")


@functools.lru_cache(maxsize=4096)
def _whole_block(spec: BackboneSpec) -> BackboneBlock:
    # A layer calls the op with the same block every step: made once.
    return BackboneBlock(spec, (0, spec.out_features), (0, spec.in_features))
