"""Kernel launches with less host time: a compiled kernel reused without Triton's per-call work.

``kernel[grid](*args, **kwargs)`` runs a good deal of Python per launch before it reaches the
launcher: binding and specializing every argument, reading knobs, building launch metadata,
hashing a cache key, checking globals. An eager training step of a seeded layer makes several
launches, and an eager step can be bound by the host (``benchmarks.host_time`` measures both
paths on a fake CUDA driver; figures in benchmarks/NOTES.md).

``launch(kernel, grid, *args, **kwargs)`` sends the first launch of each key through Triton
(which specializes and compiles as usual) and keeps the compiled kernel it returns. The key is
finer than Triton's specialization: every argument's type; tensors' dtype and 16-byte
alignment; ints' values (only their width where a parameter is ``do_not_specialize``); the
keyword arguments (constexprs and options such as ``num_warps``); the current device; and the
knobs in Triton's own key (``debug``, instrumentation mode). Later launches with that key call
the compiled kernel's launcher with the arguments Triton would pass it (tests/kernels/test_launch.py
holds the two paths' launches equal on a fake CUDA driver). Sizes and strides are part of the
key, so a new shape costs one launch through Triton; a kernel's cache starts over past 4,096
keys.

``bind(kernel, grid, *args, **kwargs)`` launches as ``launch`` does and returns a
``BoundLaunch``: called with new positional arguments, it calls the compiled kernel's launcher
at once, without building the key, for a caller that keys its own calls at least as finely (the
eager plans of ``lottalora.ops.eager``). What can change without the arguments changing (direct
launches switched off, a launch hook, the current device, the knobs in Triton's key) is checked
at every call and sends the launch through ``launch``.

Falls back to ``kernel[grid]`` under the interpreter, while a Triton launch hook is registered
(a profiler such as proton needs them; the direct launch passes none), for kernels with
pre-run hooks, for arguments it does not key (positional ones other than tensors and plain
scalars, runtime parameters given by keyword, unhashable constexprs), and with a Triton other
than the versions whose launch path was checked (3.6 and 3.9). ``LOTTALORA_DIRECT_LAUNCH=0``,
set before the first launch, sends every launch through Triton. Not re-checked on cached
launches: Triton's test that the globals a kernel reads have not changed (lottalora's kernels
read constants only).
"""

from __future__ import annotations

import os
from operator import attrgetter, itemgetter

import torch
import triton
from triton import knobs
from triton.knobs import HookChain
from triton.runtime import driver

from .runtime import is_interpreting

_MAX_ENTRIES = 4096  # keys per kernel before the cache starts over (shapes are part of a key)
_MISSING = object()


_VALUE_TYPES = (int, bool, type(None))  # keyed by value; floats by type alone (Triton's fp32)


def _int_width(value: int) -> int:
    """Triton's integer type for a value it does not specialize on: i32, i64 or u64."""
    return 0 if -(2**31) <= value < 2**31 else 1 if -(2**63) <= value < 2**63 else 2


class _KernelCache:
    """One kernel's compiled launches by key, and its parameters after the positional ones."""

    def __init__(self, kernel):
        self.names = tuple(p.name for p in kernel.params)
        self.defaults = tuple(p.default if p.has_default else _MISSING for p in kernel.params)
        self.runtime_params = frozenset(p.name for p in kernel.params if not p.is_constexpr)
        self.unspecialized = frozenset(i for i, p in enumerate(kernel.params) if p.do_not_specialize)
        self.entries: dict = {}
        self.layouts: dict = {}  # (argument types, keyword names) -> getters, or None: not cached

    def layout(self, types: tuple, keywords: tuple):
        """Getters of what keys arguments of these types and these keyword names: (tensors, values
        Triton may specialize on, ints it does not); None when such a launch is not cached: a
        positional argument other than a tensor or a plain scalar (a tuple of tensors would be
        keyed by identity), or a runtime parameter given by keyword (a tensor there too)."""
        key = (types, keywords)
        if key not in self.layouts:
            tensors = [i for i, t in enumerate(types) if issubclass(t, torch.Tensor)]
            widths = [i for i, t in enumerate(types) if t is int and i in self.unspecialized]
            values = [i for i, t in enumerate(types) if t in _VALUE_TYPES and i not in widths]
            cacheable = all(issubclass(t, torch.Tensor) or t in _VALUE_TYPES or t is float for t in types) and \
                not any(name in self.runtime_params for name in keywords)
            self.layouts[key] = (_getter(tensors), _getter(values), _getter(widths)) if cacheable else None
        return self.layouts[key]

    def tail(self, n_args: int, kwargs: dict) -> tuple | None:
        """The values of the parameters after the first n_args, from kwargs or defaults (None if
        one is missing: Triton then raises its own error)."""
        values = tuple(kwargs.get(name, default) for name, default in zip(self.names[n_args:], self.defaults[n_args:]))
        return None if any(v is _MISSING for v in values) else values


def _getter(indices: list[int]):
    """args -> tuple(args[i] for i in indices), in C where it can be."""
    if len(indices) >= 2:
        return itemgetter(*indices)
    if indices:
        i = indices[0]
        return lambda args: (args[i],)
    return lambda args: ()


_dtype = attrgetter("dtype")
_data_ptr = torch.Tensor.data_ptr
_misalignment = (15).__and__  # a data pointer's offset from 16 bytes, which Triton specializes on


_CACHES: dict[int, tuple[object, _KernelCache]] = {}


def _kernel_cache(kernel) -> _KernelCache:
    entry = _CACHES.get(id(kernel))
    if entry is None or entry[0] is not kernel:
        entry = _CACHES[id(kernel)] = (kernel, _KernelCache(kernel))
    return entry[1]


def _hooked(hook) -> bool:
    """Whether a launch hook would do anything: Triton keeps an empty HookChain when none is set."""
    return hook is not None and (not isinstance(hook, HookChain) or bool(hook.calls))


# The Triton versions (major, minor) whose launch path (JITFunction.run -> CompiledKernel.run ->
# the CUDA launcher's arguments) this module reproduces, read and tested: 3.6 (the GPU image)
# and 3.9 (CI). Others launch through Triton until checked.
DIRECT_LAUNCH_TRITON_VERSIONS = frozenset({(3, 6), (3, 9)})


def direct_launch_supported(version: str) -> bool:
    """Whether a Triton ``version`` string ("3.6.0", "3.9.1+git...") is one that was checked."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return major_minor in DIRECT_LAUNCH_TRITON_VERSIONS


def _direct_enabled() -> bool:
    return (os.environ.get("LOTTALORA_DIRECT_LAUNCH", "1") != "0" and not is_interpreting()
            and direct_launch_supported(triton.__version__))


_DIRECT: bool | None = None


def _knob_state() -> tuple:
    """The knobs that enter Triton's own key (a launch compiled under other values is another kernel)."""
    return (knobs.runtime.debug, knobs.compilation.instrumentation_mode,
            getattr(knobs.compilation, "fpsan_homomorphic_casts", None))


def _launch_hooked() -> bool:
    return _hooked(knobs.runtime.launch_enter_hook) or _hooked(knobs.runtime.launch_exit_hook)


def direct_launches() -> bool:
    """Whether launches are direct now (see the module docstring), with no launch hook set: a
    ``BoundLaunch`` made now would be used as bound."""
    global _DIRECT
    if _DIRECT is None:
        _DIRECT = _direct_enabled()
    return _DIRECT and not _launch_hooked()


def launch(kernel, grid: tuple[int, ...], *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, with the per-launch host work done once per
    specialization (see the module docstring). ``grid`` is a tuple of 1-3 ints."""
    _launch(kernel, grid, args, kwargs)


def _launch(kernel, grid: tuple[int, ...], args: tuple, kwargs: dict):
    """``launch``; returns (device, compiled kernel, its tail of arguments) when the launch was
    direct or compiled one to reuse, None where it went through Triton's own path."""
    global _DIRECT
    if _DIRECT is None:
        _DIRECT = _direct_enabled()
    if not _DIRECT or _launch_hooked():
        kernel[grid](*args, **kwargs)
        return None
    cache = _kernel_cache(kernel)
    if kernel.pre_run_hooks:
        kernel[grid](*args, **kwargs)
        return None
    device = driver.active.get_current_device()
    # Finer than Triton's specialization, so a key never maps to another specialization's
    # kernel: every argument's type; tensors' dtypes and addresses mod 16; ints' values (Triton
    # sees == 1, % 16 == 0 and the width), or only their width where Triton does not specialize
    # (the backbone's seed words: one entry for every seed); constexprs and options; and the
    # knobs that enter Triton's own key. An entry per shape. C-level maps and getters keep the
    # key's own cost small.
    types = tuple(map(type, args))
    layout = cache.layout(types, tuple(kwargs))
    if layout is None:
        kernel[grid](*args, **kwargs)
        return None
    tensors_of, values_of, widths_of = layout
    tensors = tensors_of(args)
    key = (device, types, tuple(kwargs.items()), tuple(map(type, kwargs.values())), tuple(map(_dtype, tensors)),
           tuple(map(_misalignment, map(_data_ptr, tensors))), values_of(args), tuple(map(_int_width, widths_of(args))),
           *_knob_state())
    try:
        entry = cache.entries.get(key)
    except TypeError:  # an unhashable argument: Triton's own path
        kernel[grid](*args, **kwargs)
        return None
    if entry is None:
        compiled = kernel.run(*args, grid=grid, warmup=False, **kwargs)
        if hasattr(compiled, "result"):  # Triton's asynchronous compile mode hands back a future
            compiled = compiled.result()
        tail = cache.tail(len(args), kwargs)
        if compiled is None or tail is None:  # None: a jit_cache_hook skipped the launch
            return None
        if len(cache.entries) >= _MAX_ENTRIES:
            cache.entries.clear()
        entry = cache.entries[key] = (compiled, tail)
        return device, compiled, tail
    compiled, tail = entry
    stream = driver.active.get_current_stream(device)
    grid_1 = grid[1] if len(grid) > 1 else 1
    grid_2 = grid[2] if len(grid) > 2 else 1
    compiled.run(grid[0], grid_1, grid_2, stream, compiled.function, compiled.packed_metadata, None, None, None,
                 *args, *tail)
    return device, compiled, tail


class BoundLaunch:
    """One launch's specialization kept (``bind``): called with new positional arguments it
    launches the compiled kernel at once, without ``launch``'s key.

    The caller vouches that the new arguments key as the bound ones did: tensors of the same
    dtypes and 16-byte alignment in the same positions, every other argument equal (the eager
    plans of ``lottalora.ops`` key their calls on exactly that). What can change under a caller
    without its arguments changing is checked at every call and sends the launch through
    ``launch``: direct launches switched off, a launch hook (a profiler), another current
    device, the knobs in Triton's key. A launch that went through Triton's own path when it was
    bound (the interpreter, a hook) has no compiled kernel (``compiled`` None) and goes
    through ``launch`` every time."""

    __slots__ = ("kernel", "grid", "kwargs", "device", "knob_state", "compiled", "tail")

    def __init__(self, kernel, grid: tuple[int, ...], kwargs: dict, device, compiled, tail: tuple | None):
        self.kernel, self.kwargs, self.device, self.compiled, self.tail = kernel, kwargs, device, compiled, tail
        self.grid = (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)
        self.knob_state = _knob_state()

    def __call__(self, *args) -> None:
        compiled = self.compiled
        if (compiled is None or not _DIRECT or _launch_hooked() or driver.active.get_current_device() != self.device
                or _knob_state() != self.knob_state):
            launch(self.kernel, self.grid, *args, **self.kwargs)
            return
        compiled.run(*self.grid, driver.active.get_current_stream(self.device), compiled.function,
                     compiled.packed_metadata, None, None, None, *args, *self.tail)


def bind(kernel, grid: tuple[int, ...], *args, **kwargs) -> BoundLaunch:
    """``launch(kernel, grid, *args, **kwargs)``, and the ``BoundLaunch`` that repeats it for
    other arguments keyed alike (directly where this launch was direct)."""
    launched = _launch(kernel, grid, args, kwargs)
    if launched is None:
        return BoundLaunch(kernel, grid, kwargs, None, None, None)
    device, compiled, tail = launched
    return BoundLaunch(kernel, grid, kwargs, device, compiled, tail)
