"""Where a model's tensors go and in what dtype: the ``device`` and ``dtype`` arguments of the
tools that build or move a model (``from_pretrained``, the demo's ``--device``), checked once
here, so that a bad one is named before anything is built (torch's own errors come later and
say neither the argument nor what was expected)."""

from __future__ import annotations

import torch

from ..ops.backend import supported_dtypes


def check_device(device, argument: str = "device") -> torch.device:
    """``device`` (a torch.device or its name) as a torch.device. TypeError for anything else
    (an int index is not taken: say "cuda:0"), ValueError for a name torch does not know and
    for a CUDA device this machine does not have."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{argument} must be a torch.device or its name ('cpu', 'cuda', 'cuda:1'), got "
                        f"{device!r} ({type(device).__name__})")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"{argument} must be a torch.device or its name ('cpu', 'cuda', 'cuda:1'), got "
                         f"{device!r}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{argument}={str(resolved)!r} asks for a CUDA device, and none is available")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"{argument}={str(resolved)!r} asks for CUDA device {resolved.index}, and there are "
                             f"{torch.cuda.device_count()}")
    return resolved


def check_floating_dtype(dtype, argument: str = "dtype") -> torch.dtype:
    """``dtype`` unchanged if it is a floating-point torch.dtype a seeded model is built in (the
    dtypes seeded layers take, ``supported_dtypes("torch")``: float8 dtypes are floating point, but
    neither a seeded layer nor torch's default dtype takes them); TypeError naming ``argument``
    otherwise."""
    allowed = supported_dtypes("torch")
    if not (isinstance(dtype, torch.dtype) and dtype in allowed):
        named = getattr(torch, dtype, None) if isinstance(dtype, str) else None
        hint = f": give torch.{dtype}" if named in allowed else ""
        raise TypeError(f"{argument} must be a floating-point torch.dtype that seeded layers compute in "
                        f"({', '.join(map(str, allowed))}), got {dtype!r}{hint}")
    return dtype
