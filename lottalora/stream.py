"""The backbone stream in PyTorch: a layer's identity (``BackboneSpec``) and ``backbone_block``.

``backbone_block`` regenerates any block of ``W_seed`` on any device without Triton, bit-exact
with the Triton tile generators (definition: ``docs/backbone.md``). Each stream version's twin
lives in its own module (``stream_v1``, ``stream_v2``); this one validates and dispatches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lottalora_kernels import stream_spec as spec

from . import stream_v1, stream_v2
from .philox import philox4x32  # noqa: F401  (re-exported: tests and docs reach Philox here)

_CHUNK_VALUES = 1 << 20
# Version 2 makes one Philox call per 128 values, so its chunks are larger: each op of the
# PyTorch Philox then runs on enough calls to amortise its fixed cost.
_V2_CHUNK_VALUES = 1 << 22


def _check_u64(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in [0, 2**64 - 1], got {type(value).__name__} {value!r}")
    if not 0 <= value <= spec.UINT64_MAX:
        raise ValueError(f"{name} must be in [0, 2**64 - 1] (a 64-bit unsigned integer), got {value}")
    return value


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that determines a layer's frozen weight ``W_seed`` (out_features x in_features).

    seed: 64-bit unsigned user seed (the Philox key). stream: 64-bit unsigned id that tells the
    layers of one model apart. init: "gaussian", "uniform" or "rademacher". version: the stream
    version (docs/backbone.md). ``version=None`` picks the newest version that provides
    ``init``; ``init=None`` picks the version's default (version 2: "rademacher", exact +-1
    signs times 1/sqrt(in_features); version 1: "gaussian").
    """

    seed: int
    stream: int
    in_features: int
    out_features: int
    init: str | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        _check_u64("seed", self.seed)
        _check_u64("stream", self.stream)
        _check_positive_int("in_features", self.in_features)
        _check_positive_int("out_features", self.out_features)
        version, init = spec.resolve_version_and_init(self.version, self.init)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "init", init)
        max_out, max_in = (2**32, 2**34) if version == 1 else (spec.V2_MAX_OUT_FEATURES, spec.V2_MAX_IN_FEATURES)
        if self.out_features > max_out or self.in_features > max_in:
            raise ValueError(
                f"stream version {version} counts rows and columns in 32-bit counter words: "
                f"out_features must be <= {max_out} and in_features <= {max_in}, "
                f"got ({self.out_features}, {self.in_features})"
            )

    @property
    def value_scale(self) -> float:
        """The float32 factor of the stream's values (see ``stream_spec.value_scale``)."""
        return spec.value_scale(self.in_features, self.init, self.version)

    @property
    def std(self) -> float:
        """float32(1/sqrt(in_features)): version 2's weights are +-std."""
        return spec.backbone_std(self.in_features)


def _check_block(spec_: BackboneSpec, rows, cols) -> tuple[tuple[int, int], tuple[int, int]]:
    row0, row1 = rows if rows is not None else (0, spec_.out_features)
    col0, col1 = cols if cols is not None else (0, spec_.in_features)
    if not (0 <= row0 <= row1 <= spec_.out_features and 0 <= col0 <= col1 <= spec_.in_features):
        raise ValueError(
            f"block rows={row0, row1} cols={col0, col1} is outside the "
            f"{spec_.out_features} x {spec_.in_features} backbone"
        )
    return (row0, row1), (col0, col1)


def _row_chunks(rows: tuple[int, int], cols: tuple[int, int], granule: int, values: int = _CHUNK_VALUES):
    """Row ranges of about ``values`` values each (aligned to ``granule`` rows), so temporaries
    stay bounded and in cache (4x faster than one pass at 4096^2 for v1)."""
    width = max(1, cols[1] - cols[0])
    step = max(granule, (values // width) // granule * granule)
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
    for r0, r1 in _row_chunks(rows, cols, stream_v2.ROW_SPAN, _V2_CHUNK_VALUES):
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
    for r0, r1 in _row_chunks(rows, cols, 1):
        out[r0 - rows[0]: r1 - rows[0]] = stream_v1.block(spec_.seed, spec_.stream, spec_.init, spec_.value_scale,
                                                          (r0, r1), cols, device)
    return out
