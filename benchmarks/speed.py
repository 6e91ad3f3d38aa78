"""Speed: the seeded layer against what users would run instead, with the floors beside.

Per shape (bf16, rank 8, bias) and pass (forward, backward, forward+backward), medians of:
- ``seeded``: lottalora.Linear as users call it (stream v2, the regime the dispatch picks);
- ``seeded one_pass on``: the same layer with ``LOTTALORA_ONE_PASS=1`` (forward and input
  gradient on the one-pass kernels at every M; off by default until a GPU has held their bits);
- ``seeded <regime>``: the forward forced through each regime that can serve the shape
  (decode up to M = 128, in 32-row launches past 32; one-pass; two-phase), to check the
  dispatch thresholds;
- ``cublas+lora``: F.linear with a stored bf16 weight plus an unfused LoRA: the baseline;
- ``cublas``: the stored weight's F.linear alone, the bar at large M (a seeded layer that
  matches it pays nothing for its adapter or for making W).
The headline is seeded / cublas+lora, measured in the same process; ``*_vs_cublas_ratio`` is
against plain cuBLAS. The results are rewritten after every shape, so a run cut short keeps
what it measured. Forwards are also timed as
CUDA graphs (``*_graph``), which removes Python and launch overhead from both sides, and the
host's time to issue a forward + backward is recorded (``host_fwd_bwd``; ``benchmarks.host_time``
estimates it without a GPU). Floors:
tensor-core time at the device's peak and HBM time for the stored weight at the copy bandwidth
measured in the same run. Generation: the decode kernel's weights per second at M = 1 (W made
in registers and consumed by the tensor cores) and the standalone generator's into a buffer,
against the stored-weight read rate (copy bandwidth / 2 bytes).

    python -m benchmarks.speed            # GPU: triton.testing.do_bench medians
    python -m benchmarks.speed --quick    # CPU smoke run of the same code (torch backend)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lottalora
from lottalora_kernels.seeded_linear import dispatch

from .harness.results import RESULTS_DIR, write_results

GPU_M = [1, 16, 32, 64, 128, 2048, 8192]
GPU_NK = [4096, 8192]
RANK = 8
DECODE_TIMED_MAX_M = 128
# Dense bf16 tensor-core peaks (vendor figures, SXM parts); the floor uses them, not a measurement.
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12}


def _peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in device_name), None)


def _timer(cuda: bool):
    """Median seconds of fn(): triton's do_bench on GPU, a perf_counter median on CPU."""
    if cuda:
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3

    def cpu_median(fn, repeats=5):
        fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)
    return cpu_median


def _graph_timer(cuda: bool):
    """Median seconds of fn() replayed as a CUDA graph (None on CPU)."""
    if not cuda:
        return None
    from triton.testing import do_bench_cudagraph

    return lambda fn: do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e-3


def copy_bandwidth(cuda: bool, timer) -> float:
    """Bytes per second of a large device copy (read + write), measured now."""
    n = (1 << 28) if cuda else (1 << 22)
    src = torch.empty(n, dtype=torch.uint8, device="cuda" if cuda else "cpu").fill_(1)
    dst = torch.empty_like(src)
    return 2 * n / timer(lambda: dst.copy_(src))


def generation_rates(cuda: bool, timer, nk: int) -> dict:
    """Weights per second: made in registers by the decode kernel at M = 1 (GPU), and written
    by the generator into a chunk that stays in L2 and into a whole HBM buffer. On a GPU pass the
    CUDA-graph timer: a call of a few microseconds timed eagerly measures the host, not the
    kernel (the first H100 run's eager rates were 5-20x below the graph ones)."""
    from lottalora_kernels.backbone_gen import generate_backbone

    device = "cuda" if cuda else "cpu"
    rates = {}
    dtype = torch.bfloat16 if cuda else torch.float32
    if not cuda:  # the torch backend's generator (the kernels need a GPU or the interpreter)
        spec = lottalora.BackboneSpec(1, 0, nk, nk)
        rates["torch_backend_generator"] = nk * nk / timer(lambda: lottalora.backbone_signs(spec))
        return rates
    layer = lottalora.Linear(nk, nk, rank=0, bias=False, seed=1, device=device, dtype=dtype)
    x = torch.randn(1, nk, device=device, dtype=dtype)
    with torch.no_grad():
        rates["decode_kernel_m1"] = nk * nk / timer(lambda: layer(x))
    chunk = torch.empty((512, nk), dtype=dtype, device=device)
    rates["generator_into_l2_chunk"] = 512 * nk / timer(
        lambda: generate_backbone(1, 0, nk, "rademacher", (0, 512), (0, nk), device, version=2, signs=True, out=chunk))
    whole = torch.empty((nk, nk), dtype=dtype, device=device)
    rates["generator_into_hbm"] = nk * nk / timer(
        lambda: generate_backbone(1, 0, nk, "rademacher", (0, nk), (0, nk), device, version=2, signs=True, out=whole))
    return rates


def host_seconds(fn, cuda: bool, calls: int = 20, repeats: int = 5) -> float | None:
    """Seconds of host time to issue fn() on a GPU: perf_counter over calls that do not wait for
    the device (the fastest of a few batches). What ``benchmarks.host_time`` estimates without a
    GPU: the two compare the GPU machine's host with the development VM's. None on CPU."""
    if not cuda:
        return None
    fn()
    samples = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    torch.cuda.synchronize()
    return min(samples)


def bench_shape(m: int, nk: int, cuda: bool, timer, graph_timer) -> list[dict]:
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    n = k = nk
    torch.manual_seed(0)
    layer = lottalora.Linear(k, n, rank=RANK, seed=1, device=device, dtype=dtype)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.02)
    w_stored = layer.backbone_weight(dtype=dtype).requires_grad_(False)
    A, B, bias, beta = layer.lora_A, layer.lora_B, layer.bias, layer.beta
    x = torch.randn(m, k, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(m, n, device=device, dtype=dtype)

    def baseline():
        return beta * F.linear(x, w_stored) + layer.scaling * F.linear(F.linear(x, A), B) + bias

    methods = {"seeded": lambda: layer(x), "cublas+lora": baseline, "cublas": lambda: F.linear(x, w_stored)}
    if cuda:
        methods["seeded one_pass on"] = lambda: layer(x)
    # Decode past 32 rows regenerates W per 32-row chunk: timed against two-phase up to 128 rows
    # to find the crossover (the dispatch sends M > DECODE_MAX_M to two-phase until measured).
    regimes = ["decode", "one_pass", "two_phase"] if m <= DECODE_TIMED_MAX_M else ["one_pass", "two_phase"]
    for regime in regimes if cuda else []:
        methods[f"seeded {regime}"] = lambda regime=regime: dispatch.seeded_linear_fwd(
            x.detach(), seed=layer.seed, stream=layer.stream, version=2, init=layer.init, out_features=n,
            lora_A=A.detach(), lora_B=B.detach(), beta=beta.detach(), bias=bias.detach(),
            scale=layer.scaling, regime=regime)
    rows = []
    for method, forward in methods.items():
        with _one_pass(method == "seeded one_pass on"):
            rows.append(_time_method(method, forward, m, n, k, dtype, cuda, timer, graph_timer, dy,
                                     (x, A, B, bias, beta)))
    return rows


@contextlib.contextmanager
def _one_pass(on: bool):
    """LOTTALORA_ONE_PASS=1 while the block runs (when ``on``), as it was after."""
    before = os.environ.get("LOTTALORA_ONE_PASS")
    if on:
        os.environ["LOTTALORA_ONE_PASS"] = "1"
    try:
        yield
    finally:
        if on and before is None:
            del os.environ["LOTTALORA_ONE_PASS"]
        elif on:
            os.environ["LOTTALORA_ONE_PASS"] = before


def _time_method(method, forward, m, n, k, dtype, cuda, timer, graph_timer, dy, leaves) -> dict:
    if method == "seeded":
        regime = dispatch.forward_regime(2, m, dtype, cuda)
    elif method == "seeded one_pass on":
        regime = "one_pass"
    else:
        regime = method.removeprefix("seeded ")
    row = {"M": m, "N": n, "K": k, "method": method, "regime": regime}
    with torch.no_grad():
        row["forward_s"] = timer(forward)
        row["forward_graph_s"] = graph_timer(forward) if graph_timer else None
    if method in ("seeded", "seeded one_pass on", "cublas+lora", "cublas"):  # forced regimes: forward only
        y = forward()
        row["backward_s"] = timer(lambda y=y: torch.autograd.backward(y, dy, retain_graph=True))
        row["fwd_bwd_s"] = timer(lambda: torch.autograd.backward(forward(), dy))
        row["host_fwd_bwd_s"] = host_seconds(lambda: torch.autograd.backward(forward(), dy), cuda)
        for param in leaves:
            param.grad = None
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes on whatever device (smoke run)")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results; "
                                                  "a temporary one with --quick)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        parser.error("the speed suite needs a CUDA GPU; use --quick for a CPU smoke run")
    if not cuda:
        os.environ.setdefault("LOTTALORA_BACKEND", "torch")
    timer, graph_timer = _timer(cuda), _graph_timer(cuda)
    device_name = torch.cuda.get_device_name() if cuda else "CPU"
    shapes = [(m, nk) for nk in GPU_NK for m in GPU_M] if not args.quick else [(1, 256), (16, 256)]
    if args.quick and cuda:
        shapes = [(1, 1024), (2048, 1024)]

    bandwidth = copy_bandwidth(cuda, timer)
    gen = generation_rates(cuda, graph_timer or timer, 8192 if cuda else 256)
    peak = _peak_flops(device_name) if cuda else None
    rows = []
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="lottalora-speed-")) if args.quick else RESULTS_DIR)
    for m, nk in shapes:
        shape_rows = bench_shape(m, nk, cuda, timer, graph_timer)
        base = next(r for r in shape_rows if r["method"] == "cublas+lora")
        plain = next(r for r in shape_rows if r["method"] == "cublas")
        for r in shape_rows:
            for key in ("forward_s", "forward_graph_s", "backward_s", "fwd_bwd_s"):
                if r.get(key) is not None and base.get(key):
                    r[key.replace("_s", "_ratio")] = r[key] / base[key]
                if r.get(key) is not None and plain.get(key):
                    r[key.replace("_s", "_vs_cublas_ratio")] = r[key] / plain[key]
            r["floor_tensor_core_fwd_s"] = 2 * m * nk * nk / peak if peak else None
            r["floor_hbm_weight_fwd_s"] = 2 * nk * nk / bandwidth
        rows += shape_rows
        seeded = next(r for r in shape_rows if r["method"] == "seeded")
        print(f"M={m:5d} N=K={nk:5d} [{seeded['regime']}] seeded fwd {seeded['forward_s'] * 1e6:9.1f} us  "
              f"ratio fwd {seeded['forward_ratio']:.2f}x  fwd+bwd {seeded['fwd_bwd_ratio']:.2f}x", flush=True)
        _write(rows, bandwidth, gen, device_name, cuda, out_dir)
    print(f"results written to {out_dir}")
    return 0


def _write(rows: list[dict], bandwidth: float, gen: dict, device_name: str, cuda: bool, out_dir: Path) -> None:
    read_rate = bandwidth / 2  # stored bf16 weights per second

    def us(v):
        return f"{v * 1e6:,.1f}" if v is not None else "-"

    def ratio(r, key):
        return f"{r[key]:.2f}" if r.get(key) is not None else "-"
    lines = [f"Device: {device_name}. Copy bandwidth measured: {bandwidth / 1e9:,.0f} GB/s; stored bf16 weights "
             f"read at {read_rate / 1e9:,.1f} G values/s. Generation: " + ", ".join(
                 f"{k} {v / 1e9:,.1f} G values/s ({v / read_rate:.2f}x the read rate)" for k, v in gen.items()), "",
             "| M | N=K | method | regime | fwd us | fwd graph us | bwd us | fwd+bwd us | fwd ratio | "
             "fwd graph ratio | fwd+bwd ratio | fwd vs cuBLAS | fwd+bwd vs cuBLAS | fwd+bwd host us | TC floor us | "
             "HBM floor us |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['M']} | {r['N']} | {r['method']} | {r['regime']} | {us(r['forward_s'])} | "
                     f"{us(r.get('forward_graph_s'))} | {us(r.get('backward_s'))} | {us(r.get('fwd_bwd_s'))} | "
                     f"{ratio(r, 'forward_ratio')} | {ratio(r, 'forward_graph_ratio')} | {ratio(r, 'fwd_bwd_ratio')} | "
                     f"{ratio(r, 'forward_vs_cublas_ratio')} | {ratio(r, 'fwd_bwd_vs_cublas_ratio')} | "
                     f"{us(r.get('host_fwd_bwd_s'))} | {us(r['floor_tensor_core_fwd_s'])} | "
                     f"{us(r['floor_hbm_weight_fwd_s'])} |")
    table = "\n".join(lines)
    tag = "gpu" if cuda else "cpu_quick"
    write_results(f"speed_{tag}", {"copy_bandwidth_Bps": bandwidth, "generation_values_per_s": gen, "rows": rows},
                  table, directory=out_dir,
                  notes="Ratios are against cublas+lora measured in the same run (lower is faster).")
    _plot(rows, out_dir / f"speed_{tag}.png", device_name)


def _plot(rows: list[dict], path: Path, device_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeded = [r for r in rows if r["method"] == "seeded"]
    labels = [f"M={r['M']}\nN=K={r['N']}" for r in seeded]
    fig, ax = plt.subplots(figsize=(max(6, len(seeded) * 0.8), 4))
    xs = range(len(seeded))
    ax.bar([x - 0.2 for x in xs], [r["forward_ratio"] for r in seeded], 0.4, label="forward")
    ax.bar([x + 0.2 for x in xs], [r["fwd_bwd_ratio"] for r in seeded], 0.4, label="forward+backward")
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1)
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("time / (cuBLAS stored weight + unfused LoRA)")
    ax.set_title(f"seeded layer vs stored weights, {device_name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
