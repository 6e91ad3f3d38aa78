"""Per-rank memory of tensor parallelism: seeded layers that regenerate their shard against stored shards.

A stack of LLaMA MLP blocks (x + down(silu(gate(x)) * up(x))), gate and up column-parallel,
down row-parallel (lottalora.distributed's styles for seeded layers, torch's for nn.Linear), on 2
CPU ranks (gloo). Variants: stored = nn.Linear weights, each rank holding its shard (frozen);
lottalora = lottalora.Linear with rank-8 adapters, each rank regenerating its rows or columns
of W_seed. Both are built on the meta device, sharded, then allocated, so no rank ever holds a
whole weight. Phases, each in fresh processes: forward (no grad) and train (forward, backward
to the input and the trainable parameters, one SGD step) on batch 1 x 128 tokens, float32.
Reported per rank: parameter bytes, and the peak RSS (the kernel's VmHWM, reset when the build
starts) above the RSS before the model was built
(the Python + torch runtime, the process group, and one warm-up run of the tiny config, so
that first-call set-up is not counted as model memory).

    python -m benchmarks.tp_memory            # benchmarks/results/tp_memory.*
    python -m benchmarks.tp_memory --quick    # tiny config (CI), results under --out or a temp dir
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from .harness.ranks import run_on_ranks, serve_as_rank
from .harness.results import RESULTS_DIR, write_results

# name: (hidden, intermediate, blocks)
CONFIGS = {"tiny": (64, 160, 2), "1024x4096x4": (1024, 4096, 4), "2048x8192x4": (2048, 8192, 4)}
FULL_CONFIGS = ["1024x4096x4", "2048x8192x4"]
VARIANTS = ("stored", "lottalora")
PHASES = ("forward", "train")
RANK, TOKENS = 8, 128
MIB = 2**20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Start the kernel's peak-RSS counter (VmHWM) afresh from the current RSS (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


class Block(nn.Module):
    def __init__(self, hidden: int, inter: int, variant: str, index: int):
        super().__init__()
        import lottalora

        def linear(name, n_in, n_out):
            if variant == "stored":
                return nn.Linear(n_in, n_out, bias=False)
            return lottalora.Linear(n_in, n_out, bias=False, rank=RANK, seed=0,
                                    stream=lottalora.stream_for_name(f"blocks.{index}.{name}"))

        self.gate, self.up, self.down = linear("gate", hidden, inter), linear("up", hidden, inter), \
            linear("down", inter, hidden)

    def forward(self, x):
        return x + self.down(nn.functional.silu(self.gate(x)) * self.up(x))


def build_sharded(config: str, variant: str, mesh):
    """The block stack, sharded over a 1-D mesh and only then allocated (each rank its shards)."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import parallelize_module

    import lottalora.distributed as ld

    hidden, inter, blocks = CONFIGS[config]
    with torch.device("meta"):
        model = nn.Sequential(*(Block(hidden, inter, variant, i) for i in range(blocks)))
    if variant == "stored":
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

        for p in model.parameters():
            p.requires_grad_(False)
    else:
        ColwiseParallel, RowwiseParallel = ld.ColwiseParallel, ld.RowwiseParallel
    for block in model:
        parallelize_module(block, mesh, {"gate": ColwiseParallel(), "up": ColwiseParallel(),
                                         "down": RowwiseParallel()})
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if isinstance(p, DTensor) else p
            if name.endswith("beta"):
                local.fill_(1.0)
            else:
                local.copy_(torch.randn(local.shape, generator=gen) * 0.02)
    return model


def _run_phase(model, x: torch.Tensor, phase: str) -> None:
    if phase == "forward":
        with torch.no_grad():
            model(x)
        return
    x.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    model(x).square().mean().backward()
    if trainable:
        torch.optim.SGD(trainable, lr=1e-3).step()


def measure_rank(rank: int, world_size: int, config: str, variant: str, phase: str) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    mesh = init_device_mesh("cpu", (world_size,))
    # The runtime (imports, DTensor's dispatch caches, first-call set-up) before the baseline: the
    # tiny config once, whose own tensors are a few KiB.
    _run_phase(build_sharded("tiny", variant, mesh), torch.randn(1, 4, CONFIGS["tiny"][0]), phase)
    base = _rss_bytes()
    _reset_peak_rss()
    model = build_sharded(config, variant, mesh)
    local = [p.to_local() if isinstance(p, DTensor) else p for p in model.parameters()]
    hidden, inter, blocks = CONFIGS[config]
    row = {"config": config, "variant": variant, "phase": phase, "ranks": world_size,
           "dense_params": 3 * hidden * inter * blocks,
           "param_bytes_per_rank": sum(t.numel() * t.element_size() for t in local),
           "trainable_per_rank": sum(t.numel() for t, p in zip(local, model.parameters(), strict=True)
                                     if p.requires_grad)}
    x = torch.randn(1, TOKENS, hidden, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    _run_phase(model, x, phase)
    row["seconds"] = round(time.perf_counter() - start, 2)
    row["peak_bytes_per_rank"] = _peak_rss_bytes() - base
    return row


def _table(rows: list[dict]) -> str:
    lines = ["| config (hidden x inter x blocks) | variant | phase | params MiB per rank | peak MiB per rank | "
             "stored / lottalora peak |", "|---|---|---|---|---|---|"]
    seeded = {(r["config"], r["phase"]): r for r in rows if r["variant"] == "lottalora"}
    for r in rows:
        s = seeded.get((r["config"], r["phase"]))
        ratio = f"{r['peak_bytes_per_rank'] / s['peak_bytes_per_rank']:.1f}x" if s and r["variant"] == "stored" else "-"
        lines.append(f"| {r['config']} | {r['variant']} | {r['phase']} | {r['param_bytes_per_rank'] / MIB:,.1f} | "
                     f"{r['peak_bytes_per_rank'] / MIB:,.1f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny config only (smoke run)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), help=f"default {FULL_CONFIGS}")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results; "
                                                  "a temporary one with --quick)")
    parser.add_argument("--as-rank", nargs=3, type=int, metavar=("RANK", "WORLD", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=3, metavar=("CONFIG", "VARIANT", "PHASE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.as_rank:
        serve_as_rank(args.as_rank, measure_rank, *args.one)

    configs = ["tiny"] if args.quick else (args.configs or FULL_CONFIGS)
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="lottalora-tp-")) if args.quick else RESULTS_DIR)
    rows = []
    for config in configs:
        for variant in VARIANTS:
            for phase in PHASES:
                per_rank = run_on_ranks("benchmarks.tp_memory", ["--one", config, variant, phase])
                rows.append({**per_rank[0], "per_rank": per_rank,
                             "peak_bytes_per_rank": max(r["peak_bytes_per_rank"] for r in per_rank)})
                print(_table(rows[-1:]).splitlines()[-1], flush=True)
    table = _table(rows)
    print(table)
    notes = (f"2 CPU ranks (one torch thread each), gloo, float32, batch 1 x {TOKENS} tokens. Peak: the larger "
             "of the two ranks' peak RSS above the RSS before the model was built. stored: nn.Linear shards "
             "(torch's ColwiseParallel / "
             "RowwiseParallel), frozen; lottalora: lottalora.Linear rank 8 (lottalora.distributed's styles), "
             "regenerating its rows or columns of W_seed in chunks of 2^21 values. Train: backward to the input "
             "and the trainable parameters (adapters and betas for lottalora, none for stored) and an SGD step.")
    write_results("tp_memory", rows, table, directory=out_dir, notes=notes)
    print(f"results written to {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
