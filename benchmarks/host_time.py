"""Host time of an eager seeded layer call, measured on a machine without a GPU.

On the H100 machine an eager training step at M = 8192, N = K = 4096 was bound by the host, not
the GPU (benchmarks/NOTES.md): each Triton launch costs tens of microseconds of Python before
the driver call. This script runs the real launch path, Triton's and lottalora's, on a fake
CUDA driver (``lottalora_kernels.tools.fake_cuda``: kernels compile for sm_90, launches are recorded and never
run; tensors stay on the CPU) and times it with ``lottalora_kernels.launch``'s direct launches on
and off.

    python -m benchmarks.host_time [--out DIR] [--quick]

Rows: one Triton launch (the epilogue kernel: its launcher's host work, then the launch); and
eager layer calls (forward, forward + backward; in the decode and one-pass regimes also a forward
in inference mode, as eager generation runs it) in the decode regime (M = 1), the two-phase
regime (W in as many chunks as an N = K = 4096 bf16 layer gets on a GPU at M = 2048 and at
M = 8192: two and one; with M = 2, sent there by lowering the decode threshold, since the host
work depends on M only through the chunk count) and the one-pass regime (whose repeated calls
replay their eager plans, ``lottalora.ops.eager``), beside two stored-weight
baselines as users run them (``stored_layers``): nn.Linear with the LoRA products as nn.Linear
modules, and PEFT's LoRA layer. Fastest of 31 batches interleaved over all cases, one thread. The
baselines' aten ops run on the CPU on a (16 -> 16) layer, where they do almost no arithmetic:
their host cost is the dispatch, where a GPU host also pays a driver launch per op (~2-5 us);
the seeded side pays its launches' host work up to the driver call (the fake launcher reads
every argument as Triton's C launcher does) and no driver call either.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from pathlib import Path

import torch

from .harness.results import RESULTS_DIR, publish


def _per_call_us(cases: dict, calls: int, repeats: int) -> dict:
    """Host time per call of each case (name -> (setup, fn); setup runs before each batch,
    untimed): the fastest of batches interleaved over all cases, so a burst of the VM's noise
    (which only adds time) cannot spoil a whole row; timeit's advice for overheads."""
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (setup, fn) in cases.items():
            setup()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: min(t) for name, t in times.items()}


def _has_direct_launch() -> bool:
    """Whether this lottalora has direct launches (the script also times older checkouts)."""
    import importlib.util

    return importlib.util.find_spec("lottalora_kernels.launch") is not None


class _Settings:
    """The module settings a case runs under (direct launches, W's chunking, the decode
    threshold, the one-pass switch), applied before each of its batches and restored at the end."""

    def __init__(self):
        from lottalora_kernels.seeded_linear import dispatch, two_phase

        self.modules = [(two_phase, "CHUNK_BYTES"), (dispatch, "DECODE_MAX_M")]
        if _has_direct_launch():
            from lottalora_kernels import launch

            self.modules.append((launch, "_DIRECT"))
        self.saved = [(module, name, getattr(module, name)) for module, name in self.modules]
        self.saved_one_pass = os.environ.get("LOTTALORA_ONE_PASS")

    def setup(self, direct: bool = True, chunk_bytes: int | None = None, decode_max_m: int | None = None,
              one_pass: bool = False):
        from lottalora_kernels.seeded_linear import dispatch, two_phase

        def apply():
            two_phase.CHUNK_BYTES = chunk_bytes if chunk_bytes is not None else self.saved[0][2]
            dispatch.DECODE_MAX_M = decode_max_m if decode_max_m is not None else self.saved[1][2]
            os.environ["LOTTALORA_ONE_PASS"] = "1" if one_pass else "0"
            if _has_direct_launch():
                from lottalora_kernels import launch

                launch._DIRECT = direct
        return apply

    def restore(self):
        for module, name, value in self.saved:
            setattr(module, name, value)
        if self.saved_one_pass is None:
            os.environ.pop("LOTTALORA_ONE_PASS", None)
        else:
            os.environ["LOTTALORA_ONE_PASS"] = self.saved_one_pass


@contextlib.contextmanager
def _triton_backend_on_cpu():
    """The layer's Triton backend for CPU tensors (its launches go to the fake driver)."""
    from lottalora.ops import checks

    saved = checks.resolve_backend
    checks.resolve_backend = lambda device: "triton"
    try:
        yield
    finally:
        checks.resolve_backend = saved


def _seeded_cases(row: str, fn, settings: _Settings, **setting) -> dict:
    """Timed cases of fn through Triton's launch path and with direct launches."""
    cases = {(row, "triton_launch_us"): (settings.setup(direct=False, **setting), fn)}
    if _has_direct_launch():
        cases[(row, "direct_launch_us")] = (settings.setup(direct=True, **setting), fn)
    return cases


def launch_cases(settings: _Settings) -> tuple[dict, dict]:
    """One epilogue launch: the launcher's host work, then the launch."""
    from lottalora_kernels.seeded_linear.epilogue import seeded_epilogue

    m, n, r = 64, 128, 8
    acc, out = torch.randn(m, n), torch.empty(m, n, dtype=torch.bfloat16)
    lo, lmat = torch.randn(m, r, dtype=torch.bfloat16), torch.randn(n, r, dtype=torch.bfloat16)
    beta, bias = torch.ones(1), torch.zeros(n, dtype=torch.bfloat16)

    def call():
        seeded_epilogue(acc, out, beta=beta, value_scale=0.5, lo=lo, lmat=lmat, lora_scale=0.5, bias=bias)
    row = "one epilogue launch"
    return {row: {"case": row, "triton_launches": 1}}, _seeded_cases(row, call, settings)


BASELINE_K = 16  # the stored layers' size: small enough that their aten ops do no arithmetic to speak of


def stored_layers(rank: int = 8, k: int = BASELINE_K) -> dict:
    """The stored-weight baselines as users run them, each a module: a frozen bf16 ``nn.Linear``
    with the LoRA products as two ``nn.Linear`` modules (``stored_lora``), and PEFT's LoRA layer
    on the same frozen ``nn.Linear`` (``peft_lora``, when peft is installed). (k, k): a GPU host
    pays these ops' dispatch and launch whatever their size, where a CPU pays their arithmetic
    too; at k = 256 bf16 that arithmetic was most of the time (one 2 x 256 x 256 product ~24 us,
    at k = 16 ~2 us), which made the baseline look slower than its host work."""
    from torch import nn

    class StoredLora(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = nn.Linear(k, k)
            self.lora_A = nn.Linear(k, rank, bias=False)
            self.lora_B = nn.Linear(rank, k, bias=False)
            self.scaling = 0.5

        def forward(self, x):
            return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling

    layers = {"stored_lora": StoredLora()}
    try:
        import peft
    except ImportError:
        peft = None
    if peft is not None:
        class Proj(nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = nn.Linear(k, k)

            def forward(self, x):
                return self.proj(x)

        wrapped = peft.get_peft_model(Proj(), peft.LoraConfig(r=rank, lora_alpha=rank / 2, target_modules=["proj"]))
        layers["peft_lora"] = wrapped.base_model.model.proj
    for name, layer in layers.items():
        layer.to(torch.bfloat16)
        base = layer.base if name == "stored_lora" else layer.base_layer
        base.weight.requires_grad_(False)  # the backbone is frozen; its bias trains, as the seeded layer's
        for p in layer.parameters():
            if p.requires_grad and p.dim() == 2:
                torch.nn.init.normal_(p)  # lora_B non-zero: no shortcut on a zero factor
    return layers


def layer_cases(m: int, regime: str, gpu_m: int, settings: _Settings, k: int = 256, rank: int = 8
                ) -> tuple[dict, dict]:
    """Eager forward and forward + backward of an (m, k) -> k bf16 seeded layer in ``regime``,
    with W in as many chunks as an N = K = 4096 layer with ``gpu_m`` rows, beside the stored
    baselines (``stored_layers``) on m rows. The two-phase path's host work depends on M only
    through the chunk count: a few rows keep the CPU's arithmetic in its aten ops (which a GPU
    host only launches) small."""
    import lottalora
    from lottalora_kernels.tools.fake_cuda import recording

    from .harness.chunks import chunk_bytes_as_on_gpu

    torch.manual_seed(0)
    layer = lottalora.Linear(k, k, rank=rank, alpha=rank / 2, seed=1).to(torch.bfloat16)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(m, k, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(m, k, dtype=torch.bfloat16)
    baselines = stored_layers(rank)
    x_stored = torch.randn(m, BASELINE_K, dtype=torch.bfloat16, requires_grad=True)
    dy_stored = torch.randn(m, BASELINE_K, dtype=torch.bfloat16)

    def inference(forward):
        with torch.inference_mode():
            return forward()

    def phases(call, x, dy):
        """(phase, fn) of one layer: forward, forward + backward, and at decode / one-pass the
        inference forward that eager generation runs."""
        out = [("forward", lambda: call(x)), ("forward + backward", lambda: torch.autograd.backward(call(x), dy))]
        if regime in ("decode", "one_pass"):
            out.insert(0, ("inference forward", lambda: inference(lambda: call(x))))
        return out
    setting = {"chunk_bytes": chunk_bytes_as_on_gpu(k, gpu_m) // 2,  # bf16 here
               "decode_max_m": m if regime == "decode" else 0, "one_pass": regime == "one_pass"}
    rows, cases = {}, {}
    stored = {name: dict(phases(b, x_stored, dy_stored)) for name, b in baselines.items()}
    for phase, fn_seeded in phases(layer, x, dy):
        row = {"decode": f"M = {m} (decode) {phase}", "one_pass": f"one_pass (one launch, any M) {phase}"}.get(
            regime, f"two_phase, W chunked as at M = {gpu_m}: {phase}")
        settings.setup(**setting)()
        with recording() as launches:
            fn_seeded()
        rows[row] = {"case": row, "triton_launches": len(launches)}
        cases.update(_seeded_cases(row, fn_seeded, settings, **setting))
        for name, fns in stored.items():
            cases[(row, f"{name}_us")] = (settings.setup(**setting), fns[phase])
    return rows, cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="fewer timed calls (a smoke run)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("benchmarks.host_time times the compiled launch path: run it without TRITON_INTERPRET")
    from lottalora_kernels.tools.fake_cuda import fake_cuda

    calls, repeats = (20, 3) if args.quick else (100, 31)
    torch.set_num_threads(1)
    saved_poison = os.environ.get("LOTTALORA_POISON_OUTPUTS")
    os.environ["LOTTALORA_POISON_OUTPUTS"] = "0"  # as a GPU user runs: no NaN fill of outputs
    try:
        with fake_cuda(), _triton_backend_on_cpu():
            settings = _Settings()
            try:
                rows, cases = launch_cases(settings)
                for m, regime, gpu_m in ((1, "decode", 1), (2, "two_phase", 2048), (2, "two_phase", 8192),
                                         (2, "one_pass", 2)):
                    more_rows, more_cases = layer_cases(m, regime, gpu_m, settings)
                    rows.update(more_rows)
                    cases.update(more_cases)
                for setup, fn in cases.values():  # warm: compile, fill the launch caches
                    setup(), fn(), fn()
                for (row, column), us in _per_call_us(cases, calls, repeats).items():
                    rows[row][column] = us
            finally:
                settings.restore()
    finally:
        if saved_poison is None:
            os.environ.pop("LOTTALORA_POISON_OUTPUTS", None)
        else:
            os.environ["LOTTALORA_POISON_OUTPUTS"] = saved_poison
    rows = list(rows.values())
    table = ["| case | Triton launches | host us, launches through Triton | host us, direct launches | "
             "nn.Linear + LoRA, host us | PEFT LoRA, host us | direct / nn.Linear + LoRA | direct / PEFT |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        direct = r.get("direct_launch_us", math.nan)
        cells = []
        for name in ("stored_lora_us", "peft_lora_us"):
            cells.append(f"{r[name]:.1f}" if name in r else "-")
        for name in ("stored_lora_us", "peft_lora_us"):
            cells.append(f"{direct / r[name]:.2f}x" if name in r else "-")
        table.append(f"| {r['case']} | {r['triton_launches']} | {r['triton_launch_us']:.1f} | {direct:.1f} | "
                     + " | ".join(cells) + " |")
    notes = ("Host time per eager call on a fake CUDA driver (kernels compiled for sm_90, launches recorded, never "
             "run; lottalora_kernels.tools.fake_cuda), the fastest of 31 batches of 100 calls interleaved over all "
             "cases, one thread, bf16, rank 8. The seeded layer is (256 -> 256); the baselines are modules as users "
             f"run them, a frozen nn.Linear with the LoRA products as two nn.Linear modules, and PEFT's LoRA layer on "
             f"the same, at ({BASELINE_K} -> {BASELINE_K}), where their aten ops do almost no arithmetic on the CPU "
             "(a GPU host pays their dispatch, not their arithmetic). Neither side pays a CUDA driver launch here: "
             "the seeded call makes the launches counted, the baselines one or more per aten op. The two-phase rows "
             "split W into as many chunks as an N = K = 4096 bf16 layer at the M named and take M = 2 rows: the "
             "host work depends on M only through the chunk count. The one-pass rows have the dispatch's one-pass "
             "regime switched on (LOTTALORA_ONE_PASS=1): one launch per forward, one per input gradient, at every M; "
             "from a layer's second call at a shape on, its eager plan replays those launches without the call's "
             "checks and dispatch (lottalora.ops.eager).")
    publish("host_time", rows, "\n".join(table), notes=notes, directory=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
