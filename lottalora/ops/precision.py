"""The op's one dtype rule and its autocast behaviour.

Accumulation is float32 for every input dtype but float64, which stays float64 (gradcheck runs
there, and nn.Linear keeps a float64 layer in float64). Under autocast the op casts its
arguments as autocast casts nn.Linear's, then runs with autocast off, so its float32
accumulations are never recast.
"""

from __future__ import annotations

import contextlib

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the op accumulates in (and returns dbeta in) for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autocast_casts(t: torch.Tensor) -> bool:
    # Floating tensors other than float64 (which stays float64, as nn.Linear keeps it).
    return t.is_floating_point() and t.dtype != torch.float64


def autocast_cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """What autocast does to a matmul argument: floating tensors other than float64 go to the
    autocast dtype; float64 stays float64."""
    return t.to(dtype) if t is not None and _autocast_casts(t) else t


def autocast_cast_dtype(t: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype ``autocast_cast(t, dtype)`` gives, without casting; ``dtype`` None: autocast off."""
    return dtype if dtype is not None and _autocast_casts(t) else t.dtype


def output_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a layer returns for input x: x's, or inside autocast the dtype autocast gives
    x (``autocast_cast``), as nn.Linear's and nn.Conv's outputs have."""
    if autocast_enabled(x.device.type) and _autocast_casts(x):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (never for meta tensors, which autocast does
    not know: asking it about them raises)."""
    return device_type != "meta" and torch.is_autocast_enabled(device_type)


def autocast_off(device_type: str):
    """Autocast disabled on ``device_type`` while the op runs (the casts autocast would do are
    done before, by ``autocast_cast``)."""
    if autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
