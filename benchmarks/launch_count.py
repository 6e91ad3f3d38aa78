"""Device launches per seeded layer call, counted without a GPU: the host's share of a step.

An eager call pays host time for every kernel it launches (on the H100 machine, about 10 us per
aten launch and more per Triton launch; benchmarks/NOTES.md), so a small-M or host-bound step
is judged by its launch count until a GPU times it. Here the Triton kernels are intercepted
under the interpreter and never run (only counted), and every aten op that would launch a CUDA
kernel is counted through a dispatch mode; views, ``empty`` and other metadata-only ops are not.
An aten op counts as one launch: a lower bound where cuBLAS launches two kernels for one matmul
(a split-K GEMV and its reduction at M = 1, seen on the H100), for the baseline and the seeded
layer alike. The stored-weight baseline (bf16 weight + unfused LoRA, as ``benchmarks.speed``
times it) is counted the same way.

    python -m benchmarks.launch_count [--out DIR]

Shapes are small (the counts do not depend on them) except that the two-phase path is given as
many W chunks as an N = K = 4096 bf16 layer gets on a GPU at M = 64 (two; one from M = 4096 on).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported: kernels are Python objects here

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import lottalora

from .harness.chunks import GPU_NK, chunk_bytes_as_on_gpu
from .harness.results import RESULTS_DIR, publish

# aten ops that launch no kernel on a GPU: allocation, views and metadata.
_NO_LAUNCH = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "view", "_unsafe_view", "reshape",
    "t", "transpose", "permute", "expand", "slice", "select", "unsqueeze", "squeeze", "as_strided", "alias",
    "detach", "lift_fresh", "_reshape_alias", "split", "unbind", "is_same_size", "size", "stride", "numel",
    "sym_size", "sym_stride", "sym_numel", "dim", "is_contiguous",
}


class _AtenLaunches(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in _NO_LAUNCH:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _triton_launches():
    """Count (and skip) every interpreted Triton launch in the block: {kernel name: calls}."""
    from triton.runtime.interpreter import InterpretedFunction

    counts = Counter()
    real_run = InterpretedFunction.run

    def count(self, *args, **kwargs):
        counts[self.fn.__name__] += 1
    InterpretedFunction.run = count
    try:
        yield counts
    finally:
        InterpretedFunction.run = real_run


def _require_interpreter() -> None:
    """The count intercepts interpreted launches: with Triton imported first without
    TRITON_INTERPRET=1, kernels would really launch (or fail on CPU tensors) and count nothing."""
    from lottalora_kernels.tools.fake_cuda import kernels_interpreted

    if not kernels_interpreted():
        raise RuntimeError("benchmarks.launch_count needs TRITON_INTERPRET=1 set before Triton is imported "
                           "(run it as python -m benchmarks.launch_count)")


@contextlib.contextmanager
def _eager_path():
    """The ops' implementations called directly, as in eager use on a GPU: the counting dispatch
    mode would otherwise send calls through the registered ops, whose insides it cannot see."""
    from lottalora.ops import custom_ops

    real = custom_ops.direct_call_ok
    custom_ops.direct_call_ok = lambda *tensors: True
    try:
        yield
    finally:
        custom_ops.direct_call_ok = real


def count_case(m: int, k: int = 256, rank: int = 8, backward: bool = True, seeded: bool = True,
               one_pass: bool = False) -> dict:
    """Launches of one forward (and one backward) of an (m, k) -> k layer with LoRA and bias;
    ``one_pass``: with the dispatch's one-pass regime switched on (LOTTALORA_ONE_PASS=1)."""
    from lottalora_kernels.seeded_linear import dispatch, two_phase

    _require_interpreter()
    torch.manual_seed(0)
    layer = lottalora.Linear(k, k, rank=rank, alpha=rank / 2, seed=1)  # a LoRA scale of 0.5, as users set it
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(m, k, requires_grad=backward)
    dy = torch.randn(m, k)
    w = layer.backbone_weight().detach()

    def forward():
        if seeded:
            return layer(x)
        return layer.beta * F.linear(x, w) + layer.scaling * F.linear(F.linear(x, layer.lora_A), layer.lora_B) + \
            layer.bias
    # The kernels, as a GPU runs them: no NaN poisoning of outputs (the test suite's check).
    saved_env = {name: os.environ.get(name) for name in ("LOTTALORA_BACKEND", "LOTTALORA_POISON_OUTPUTS",
                                                          "LOTTALORA_ONE_PASS")}
    os.environ.update(LOTTALORA_BACKEND="triton", LOTTALORA_POISON_OUTPUTS="0",
                      LOTTALORA_ONE_PASS="1" if one_pass else "0")
    row = {"M": m, "method": ("seeded, one_pass on" if one_pass else "seeded") if seeded else "stored+lora",
           "regime": dispatch.forward_regime(2, m, torch.bfloat16, True) if seeded else "-"}
    chunk_bytes = two_phase.CHUNK_BYTES
    two_phase.CHUNK_BYTES = chunk_bytes_as_on_gpu(k)
    try:
        forward()  # warm caches (specs, tables) out of the count
        phases = [("forward", forward)]
        if backward:
            y = forward()
            phases.append(("backward", lambda: torch.autograd.backward(y, dy)))
        for phase, run in phases:
            with _triton_launches() as triton_counts, _eager_path(), _AtenLaunches() as aten:
                run()
            row[f"{phase}_triton"] = sum(triton_counts.values())
            row[f"{phase}_aten"] = sum(aten.ops.values())
            row[f"{phase}_launches"] = row[f"{phase}_triton"] + row[f"{phase}_aten"]
            row[f"{phase}_aten_ops"] = dict(aten.ops)
    finally:
        two_phase.CHUNK_BYTES = chunk_bytes
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    rows = [count_case(m, seeded=seeded) for m in (1, 64) for seeded in (True, False)]
    rows += [count_case(m, one_pass=True) for m in (1, 64)]
    header = ("| M | method | regime | forward launches (Triton + aten) | backward launches (Triton + aten) | "
              "backward aten ops |")
    table = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        ops = ", ".join(f"{name} {n}" for name, n in sorted(r["backward_aten_ops"].items()))
        table.append(f"| {r['M']} | {r['method']} | {r['regime']} | {r['forward_launches']} "
                     f"({r['forward_triton']} + {r['forward_aten']}) | {r['backward_launches']} "
                     f"({r['backward_triton']} + {r['backward_aten']}) | {ops} |")
    notes = ("Counted, not timed: Triton launches intercepted under the interpreter, aten ops that launch a kernel "
             "on a GPU counted by a dispatch mode (float32 CPU tensors, LOTTALORA_BACKEND=triton; regimes as a GPU "
             f"picks them for bf16; W in as many chunks as an N = K = {GPU_NK} bf16 layer). The backward includes "
             "autograd's gradient accumulation.")
    publish("launch_count", rows, "\n".join(table), notes=notes, directory=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
