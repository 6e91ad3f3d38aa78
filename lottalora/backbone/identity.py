"""A backbone's identity outside the process: the stream a layer's name gives it
(``stream_for_name``), and a fingerprint of the values this build's generator draws for it
(``backbone_fingerprint``). Both are part of the file formats (docs/backbone.md,
docs/checkpoint.md): their definitions never change within a format version."""

from __future__ import annotations

import hashlib

import torch

from .blocks import backbone_block
from .spec import BackboneSpec

STREAM_NAME_PREFIX = b"lottalora/stream/v1:"
_FINGERPRINT_ROWS = 2
_FINGERPRINT_COLS = 64


def stream_for_name(qualified_name: str) -> int:
    """The 64-bit stream of the layer at ``qualified_name``: the first 8 bytes, little-endian, of
    SHA-256("lottalora/stream/v1:" + name in UTF-8). Documented in docs/backbone.md."""
    if not isinstance(qualified_name, str):
        raise TypeError(f"qualified_name must be a str, got {type(qualified_name).__name__}")
    digest = hashlib.sha256(STREAM_NAME_PREFIX + qualified_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def backbone_fingerprint(spec: BackboneSpec) -> str:
    """SHA-256 (first 16 hex digits) of a few regenerated values: the first and last two rows'
    first 64 columns, as little-endian float32 bytes. A build whose generator differs gets
    another value."""
    rows = min(_FINGERPRINT_ROWS, spec.out_features)
    cols = (0, min(_FINGERPRINT_COLS, spec.in_features))
    first = backbone_block(spec, rows=(0, rows), cols=cols)
    last = backbone_block(spec, rows=(spec.out_features - rows, spec.out_features), cols=cols)
    return hashlib.sha256(_float32_le_bytes(first) + _float32_le_bytes(last)).hexdigest()[:16]


def _float32_le_bytes(t: torch.Tensor) -> bytes:
    """The values' float32 bytes in little-endian order, whatever the machine's byte order."""
    return t.detach().cpu().numpy().astype("<f4").tobytes()
