"""A CUDA driver for Triton on a machine without a GPU: launches are recorded, nothing runs.

Kernels compile for sm_90 with the ptxas bundled with Triton, as on an H100; the launcher Triton
builds for them is replaced by one that calls the launch hooks and reads each tensor argument's
data pointer (what the C launcher does) and records the launch. Tensors stay on the CPU. This
measures and tests the host side of a launch (``benchmarks.host_time``,
tests/kernels/test_launch.py): Triton's Python launch path and lottalora's own, everything a GPU
host runs before the CUDA driver call.

Triton must be imported without ``TRITON_INTERPRET`` (kernels are then JIT functions, not
interpreted ones): run in a process of its own.
"""

from __future__ import annotations

import contextlib
import types
import zlib

import torch


def kernels_interpreted() -> bool:
    """Whether this process's Triton kernels were built for the interpreter (TRITON_INTERPRET was
    set when Triton jitted them), whatever the variable says now."""
    from triton.runtime.interpreter import InterpretedFunction

    from ..seeded_linear import epilogue

    return isinstance(epilogue._seeded_epilogue_kernel, InterpretedFunction)


def _normalized(value):
    """A launch argument in a comparable form: tensors by address, dtype and shape."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.data_ptr(), value.dtype, tuple(value.shape))
    return value


class _RecordingLauncher:
    """Stands in for Triton's CudaLauncher: same call signature, records instead of launching."""

    launches: list | None = None  # set by recording()

    def __init__(self, src, metadata):
        self.name = metadata.name

    def __call__(self, grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata,
                 enter_hook, exit_hook, *args):
        if enter_hook is not None:
            enter_hook(launch_metadata)
        for arg in args:
            if isinstance(arg, torch.Tensor):
                arg.data_ptr()
        if exit_hook is not None:
            exit_hook(launch_metadata)
        if _RecordingLauncher.launches is not None:
            _RecordingLauncher.launches.append(
                (self.name, (grid_x, grid_y, grid_z), stream, function, tuple(_normalized(a) for a in args)))


class FakeCudaDriver:
    """The parts of Triton's CUDA driver that compiling and launching touch, for device 0 of
    capability 9.0 (an H100: 132 SMs, 227 KiB of shared memory per block)."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self._target = GPUTarget("cuda", 90, 32)
        self.utils = types.SimpleNamespace(
            # (module, function, registers, spills, max threads); the function handle is the
            # binary's checksum, so launches of different specializations differ in it
            load_binary=lambda name, binary, shared, device: (1, zlib.crc32(binary), 0, 0, 1024),
            get_device_properties=lambda device: {"max_shared_mem": 232448, "multiprocessor_count": 132},
            unload_module=lambda module: None,
        )
        self.launcher_cls = _RecordingLauncher

    def is_active(self) -> bool:
        return True

    def get_current_target(self):
        return self._target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device) -> int:
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


@contextlib.contextmanager
def fake_cuda():
    """Make FakeCudaDriver Triton's active driver inside the block."""
    from triton.runtime import driver

    if kernels_interpreted():
        raise RuntimeError("the fake CUDA driver needs Triton imported without TRITON_INTERPRET=1 (kernels are "
                           "interpreted in this process)")
    previous = driver._active  # None until a driver was asked for (asking would fail here: no CUDA)
    driver.set_active(FakeCudaDriver())
    try:
        yield
    finally:
        driver._active = previous


@contextlib.contextmanager
def recording():
    """Record the launches made inside the block: [(kernel name, grid, stream, function, args)]."""
    launches: list = []
    _RecordingLauncher.launches = launches
    try:
        yield launches
    finally:
        _RecordingLauncher.launches = None
