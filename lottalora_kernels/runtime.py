"""Host-side facts the launchers share: whether Triton interprets, the device's properties, and
launch arithmetic in plain Python."""

from __future__ import annotations

import torch

from .environment import flag


def is_interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return flag("TRITON_INTERPRET")


_DEVICE_PROPERTIES: dict[int, object] = {}


def _device_properties(device: torch.device):
    """torch.cuda.get_device_properties, asked once per device: the launchers read it on every
    call."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _DEVICE_PROPERTIES:
        _DEVICE_PROPERTIES[index] = torch.cuda.get_device_properties(index)
    return _DEVICE_PROPERTIES[index]


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device."""
    return _device_properties(device).multi_processor_count


def launch_sm_count(device: torch.device) -> int | None:
    """The multiprocessors a launch on ``device`` fills: the CUDA device's; None under the
    interpreter (launchers then pick small test tilings); for tensors off CUDA launched
    compiled (the fake CUDA driver of ``tools.fake_cuda``, which measures host time), the active
    Triton driver's device, so the launchers do the host work they do on that GPU."""
    if device.type == "cuda":
        return sm_count(device)
    if is_interpreting():
        return None
    from triton.runtime import driver

    active = driver.active
    return active.utils.get_device_properties(active.get_current_device())["multiprocessor_count"]


def capability_major(device: torch.device) -> int:
    """A CUDA device's compute capability major version."""
    return _device_properties(device).major


def narrowed(t: torch.Tensor | None, dim: int, start: int, stop: int) -> torch.Tensor | None:
    """t[start:stop] along ``dim`` (None stays None), or t itself when that is all of it: the
    launchers slice per chunk of rows or of W, usually one chunk covering everything, and each
    view costs the host time on every call."""
    if t is None or (start == 0 and stop == t.shape[dim]):
        return t
    return t.narrow(dim, start, stop - start)


def cdiv(a: int, b: int) -> int:
    """Ceiling division for launch arithmetic (``triton.cdiv`` is a constexpr function since
    Triton 3.9, and costs a Python call through Triton's machinery on the host)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), for host code (see ``cdiv``)."""
    return 1 << (n - 1).bit_length()
