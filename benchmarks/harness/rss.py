"""A CPU process's resident memory, read from /proc (Linux): the peak of a step as the growth of the
resident high-water mark (VmHWM) over a baseline, with the mark reset just before the step
(ru_maxrss cannot be reset, and a fresh process carries its parent's)."""

from __future__ import annotations

import ctypes
import gc


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) * 1024


def resident_bytes() -> int:
    """The process's resident set now, after freeing what Python and malloc can give back."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed tensors back to the system, not kept by malloc
    except (OSError, AttributeError):
        pass
    return _status_bytes("VmRSS")


def reset_peak() -> None:
    """The high-water mark restarts at the resident size now."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def peak_bytes() -> int:
    """The resident high-water mark since the last ``reset_peak``."""
    return _status_bytes("VmHWM")
