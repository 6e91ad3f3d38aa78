"""Nothing in a seeded layer's forward or backward waits on the host or copies from it, on either
backend: no ``.item()`` / ``float(t)`` / ``bool(t)`` (aten's ``_local_scalar_dense``), no
data-dependent shapes (``nonzero``, ``masked_select``, ``unique``), and no tensor made from
Python data on every call (``torch.tensor``: ``lift_fresh``, a host-to-device copy on a GPU). Any
of them would stop a CUDA graph from capturing the step and make ``torch.compile(mode=
"reduce-overhead")`` fall back to eager. The calls after a first (warm-up) call are recorded by
the CPU profiler, which sees every aten op the eager path runs without changing that path;
on the Triton backend the kernels are skipped (their launchers, the host code, still run)."""

import contextlib

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import lottalora

HOST_SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero",
                 "aten::masked_select", "aten::unique", "aten::_unique2", "aten::lift_fresh"}


@contextlib.contextmanager
def kernels_skipped():
    """Interpreted Triton launches return at once (their outputs stay as allocated)."""
    from triton.runtime.interpreter import InterpretedFunction

    real_run = InterpretedFunction.run
    InterpretedFunction.run = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        InterpretedFunction.run = real_run


def _steps(layer: lottalora.Linear, m: int) -> None:
    """A training step's forward and backward, and an inference forward, of ``layer`` at ``m`` rows."""
    x = torch.randn(m, layer.in_features, requires_grad=True)
    layer(x).sum().backward()
    with torch.inference_mode():
        layer(x.detach())


def _ops_after_warm_up(layer: lottalora.Linear, m: int) -> set[str]:
    _steps(layer, m)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _steps(layer, m)
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("m", [1, 40])
@pytest.mark.parametrize("out_features", [67, 5])  # rows ending inside a 64-row span, and fewer than 8
@pytest.mark.parametrize("use_dora", [False, True])
def test_seeded_layer_step_has_no_host_synchronisation(monkeypatch, backend, version, m, out_features, use_dora):
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    torch.manual_seed(0)
    layer = lottalora.Linear(200, out_features, rank=4, stream_version=version, use_dora=use_dora)
    with kernels_skipped() if backend == "triton" else contextlib.nullcontext():
        ops = _ops_after_warm_up(layer, m)
    assert not ops & HOST_SYNC_OPS, f"host synchronisation in the step: {sorted(ops & HOST_SYNC_OPS)}"
    assert "aten::mm" in ops or "aten::addmm" in ops or backend == "triton"  # the profiler saw the step
