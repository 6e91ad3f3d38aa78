"""Speed: the fused seeded layer against what users would run instead, with the floors beside.

Per shape (bf16, rank 8, bias) and pass (forward, backward, forward+backward), medians of:
- ``seeded``: lottalora's fused kernels (W_seed regenerated in registers);
- ``cublas+lora``: F.linear with a stored weight plus an unfused LoRA (the baseline);
- ``regen+matmul``: generate the full W_seed with the standalone kernel, then the baseline.
The headline is seeded / cublas+lora, measured in the same process. Floors: tensor-core time
for the FLOPs at the device's peak, HBM time for the stored weight's bytes at the copy bandwidth
measured in the same run, and the generator's rate (values/s) against the stored-weight read
rate (copy bandwidth / 2 bytes).

    python -m benchmarks.speed            # GPU: triton.testing.do_bench medians
    python -m benchmarks.speed --quick    # CPU smoke run of the same code (torch backend)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lottalora
from lottalora.stream import BackboneSpec

from .results import RESULTS_DIR, write_results

GPU_M = [1, 16, 128, 2048, 8192]
GPU_NK = [1024, 4096, 8192]
RANK = 8
# Dense bf16 tensor-core peaks (vendor figures, SXM parts); the floor uses them, not a measurement.
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12}


def _peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None


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


def copy_bandwidth(cuda: bool, timer) -> float:
    """Bytes per second of a large device copy (read + write), measured now."""
    n = (1 << 28) if cuda else (1 << 22)
    src = torch.empty(n, dtype=torch.uint8, device="cuda" if cuda else "cpu").fill_(1)
    dst = torch.empty_like(src)
    return 2 * n / timer(lambda: dst.copy_(src))


def generation_rate(cuda: bool, timer, n: int, k: int) -> float:
    """Backbone values per second from the standalone generator (gaussian, float32 output)."""
    if cuda:
        from lottalora_kernels.backbone_gen import generate_backbone

        fn = lambda: generate_backbone(0, 0, k, "gaussian", (0, n), (0, k), "cuda")  # noqa: E731
    else:
        spec = BackboneSpec(0, 0, k, n)
        fn = lambda: lottalora.backbone_block(spec)  # noqa: E731
    return n * k / timer(fn)


def bench_shape(m: int, nk: int, cuda: bool, timer) -> list[dict]:
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

    def baseline(weight):
        return beta * F.linear(x, weight) + layer.scaling * F.linear(F.linear(x, A), B) + bias

    if cuda:
        from lottalora_kernels.backbone_gen import generate_backbone

        regen = lambda: generate_backbone(1, 0, k, "gaussian", (0, n), (0, k), device).to(dtype)  # noqa: E731
    else:
        regen = lambda: layer.backbone_weight(dtype=dtype)  # noqa: E731
    methods = {"seeded": lambda: layer(x), "cublas+lora": lambda: baseline(w_stored),
               "regen+matmul": lambda: baseline(regen())}
    rows = []
    for method, forward in methods.items():
        with torch.no_grad():
            t_fwd = timer(forward)
        y = forward()
        t_bwd = timer(lambda y=y: torch.autograd.backward(y, dy, retain_graph=True))
        t_both = timer(lambda forward=forward: torch.autograd.backward(forward(), dy))
        for param in (x, A, B, bias, beta):
            param.grad = None
        rows.append({"M": m, "N": n, "K": k, "method": method, "forward_s": t_fwd, "backward_s": t_bwd,
                     "fwd_bwd_s": t_both})
    return rows


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
    timer = _timer(cuda)
    device_name = torch.cuda.get_device_name() if cuda else "CPU"
    shapes = [(m, nk) for nk in GPU_NK for m in GPU_M] if not args.quick else [(1, 64), (16, 64)]
    if args.quick and cuda:
        shapes = [(1, 1024), (2048, 1024)]

    bandwidth = copy_bandwidth(cuda, timer)
    gen_nk = 8192 if cuda else 256
    gen_rate = generation_rate(cuda, timer, gen_nk, gen_nk)
    peak = _peak_flops(device_name) if cuda else None
    rows = []
    for m, nk in shapes:
        shape_rows = bench_shape(m, nk, cuda, timer)
        base = next(r for r in shape_rows if r["method"] == "cublas+lora")
        flops = 2 * m * nk * nk
        for r in shape_rows:
            for key in ("forward_s", "backward_s", "fwd_bwd_s"):
                r[key.replace("_s", "_ratio")] = r[key] / base[key]
            r["floor_tensor_core_fwd_s"] = flops / peak if peak else None
            r["floor_hbm_weight_fwd_s"] = 2 * nk * nk / bandwidth
        rows += shape_rows
        seeded = next(r for r in shape_rows if r["method"] == "seeded")
        print(f"M={m:5d} N=K={nk:5d}  seeded fwd {seeded['forward_s'] * 1e6:9.1f} us  "
              f"ratio fwd {seeded['forward_ratio']:.2f}x  fwd+bwd {seeded['fwd_bwd_ratio']:.2f}x", flush=True)

    lines = [f"Device: {device_name}. Copy bandwidth measured: {bandwidth / 1e9:,.0f} GB/s; stored bf16 weight "
             f"read rate {bandwidth / 2 / 1e9:,.1f} G values/s; generator (gaussian, {gen_nk}x{gen_nk}, float32 "
             f"out): {gen_rate / 1e9:,.2f} G values/s = {gen_rate / (bandwidth / 2):.3f}x the read rate.", "",
             "| M | N=K | method | fwd us | bwd us | fwd+bwd us | fwd ratio | fwd+bwd ratio | TC floor us | HBM floor us |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tc = f"{r['floor_tensor_core_fwd_s'] * 1e6:.1f}" if r["floor_tensor_core_fwd_s"] else "-"
        lines.append(f"| {r['M']} | {r['N']} | {r['method']} | {r['forward_s'] * 1e6:,.1f} | "
                     f"{r['backward_s'] * 1e6:,.1f} | {r['fwd_bwd_s'] * 1e6:,.1f} | {r['forward_ratio']:.2f} | "
                     f"{r['fwd_bwd_ratio']:.2f} | {tc} | {r['floor_hbm_weight_fwd_s'] * 1e6:.1f} |")
    table = "\n".join(lines)
    print(table)
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="lottalora-speed-")) if args.quick else RESULTS_DIR)
    tag = "gpu" if cuda else "cpu_quick"
    write_results(f"speed_{tag}", {"copy_bandwidth_Bps": bandwidth, "generation_values_per_s": gen_rate,
                                   "rows": rows}, table, directory=out_dir,
                  notes="Ratios are against cublas+lora measured in the same run (lower is faster).")
    _plot(rows, out_dir / f"speed_{tag}.png", device_name)
    print(f"results written to {out_dir}")
    return 0


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
