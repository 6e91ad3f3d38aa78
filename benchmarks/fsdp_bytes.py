"""Bytes moved per FSDP2 training step: a converted LLaMA against the same model with stored weights.

For LLaMA-style configs (benchmarks/harness/llama.py), each variant is built identically on 2 CPU ranks
(gloo), wrapped by ``fully_shard`` per decoder layer and at the root (FSDP2's defaults: layers
reshard after forward, the root does not), and trained for two AdamW steps on batch 1 x 32
tokens. Every collective is counted by a TorchDispatchMode on the c10d ops (CPU only: on CUDA
the backward runs on other threads, which the mode does not see). Reported per rank, for the
second (steady) step: all-gather bytes (the unsharded tensors each all-gather assembles) and
reduce-scatter bytes (the unsharded gradients each reduce-scatter reduces); a ring moves about
(ranks - 1) / ranks of that through each rank. Variants: full = stored weights, all trained;
lora = stored frozen weights + rank-8 LoRA on q,k,v,o; lottalora = q,k,v,o seeded + rank-8
adapters, MLP seeded without adapter. All train embeddings, norms and the head.

    python -m benchmarks.fsdp_bytes             # 35M, 134M, 374M: benchmarks/results/fsdp_bytes.*
    python -m benchmarks.fsdp_bytes --quick     # tiny config (CI), results under --out or a temp dir
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lottalora.distributed.collectives import CollectiveCounter

from .harness.ranks import run_on_ranks, serve_as_rank
from .harness.results import RESULTS_DIR, write_results

FULL_CONFIGS = ["35M", "134M", "374M"]
VARIANTS = ("full", "lora", "lottalora")
SEQ, STEPS = 32, 2
MIB = 2**20
def shard_llama(model) -> None:
    """fully_shard each decoder layer, then the root (FSDP2's usual wrapping)."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)


def measure_rank(rank: int, world_size: int, config: str, variant: str) -> dict:
    """Build, shard and train ``variant`` of ``config`` on this rank; the collectives of each step."""
    from .harness.llama import build, parameter_count

    torch.manual_seed(0)
    model = build(config, variant)
    params = list(model.parameters())
    row = {"config": config, "variant": variant, "ranks": world_size, "dense_params": parameter_count(config),
           "stored_params": sum(p.numel() for p in params),
           "trainable_params": sum(p.numel() for p in params if p.requires_grad)}
    shard_llama(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(1 + rank)
    steps = []
    for _ in range(STEPS):
        ids = torch.randint(0, model.config.vocab_size, (1, SEQ), generator=gen)
        counter = CollectiveCounter()
        start = time.perf_counter()
        with counter:
            loss = model(ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        steps.append({"all_gather_bytes": counter.total("all_gather"),
                      "reduce_scatter_bytes": counter.total("reduce_scatter"),
                      "other_bytes": counter.total("other"),
                      "all_gathers": sum(k == "all_gather" for k, *_ in counter.ops),
                      "reduce_scatters": sum(k == "reduce_scatter" for k, *_ in counter.ops),
                      "other_ops": sorted({n for k, n, *_ in counter.ops if k == "other"}),
                      "seconds": round(time.perf_counter() - start, 2)})
    return {**row, "steps": steps, **steps[-1]}


def _table(rows: list[dict]) -> str:
    lines = ["| config | variant | stored params | trainable | all-gather MiB | reduce-scatter MiB | total MiB | "
             "vs lottalora | collectives (AG + RS) |", "|---|---|---|---|---|---|---|---|---|"]
    seeded = {r["config"]: r for r in rows if r["variant"] == "lottalora"}
    for r in rows:
        total = r["all_gather_bytes"] + r["reduce_scatter_bytes"]
        base = seeded.get(r["config"])
        ratio = f"{total / (base['all_gather_bytes'] + base['reduce_scatter_bytes']):.1f}x" if base else "-"
        lines.append(f"| {r['config']} | {r['variant']} | {r['stored_params']:,} | {r['trainable_params']:,} | "
                     f"{r['all_gather_bytes'] / MIB:,.1f} | {r['reduce_scatter_bytes'] / MIB:,.1f} | "
                     f"{total / MIB:,.1f} | {ratio} | {r['all_gathers']} + {r['reduce_scatters']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny config only (smoke run)")
    parser.add_argument("--configs", nargs="+", help=f"configs to run (default {FULL_CONFIGS})")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results; "
                                                  "a temporary one with --quick)")
    parser.add_argument("--as-rank", nargs=3, type=int, metavar=("RANK", "WORLD", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.as_rank:
        serve_as_rank(args.as_rank, measure_rank, *args.one)

    configs = ["tiny"] if args.quick else (args.configs or FULL_CONFIGS)
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="lottalora-fsdp-")) if args.quick else RESULTS_DIR)
    rows = []
    for config in configs:
        for variant in VARIANTS:
            per_rank = run_on_ranks("benchmarks.fsdp_bytes", ["--one", config, variant])
            if any(r["all_gather_bytes"] != per_rank[0]["all_gather_bytes"] for r in per_rank):
                raise RuntimeError(f"ranks moved different byte counts: {per_rank}")
            rows.append({**per_rank[0], "seconds_per_rank": [r["seconds"] for r in per_rank]})
            print(_table(rows[-1:]).splitlines()[-1], flush=True)
    table = _table(rows)
    print(table)
    others = sorted({op for r in rows for s in r["steps"] for op in s["other_ops"]})
    notes = ("2 CPU ranks (one torch thread each), gloo, FSDP2 (fully_shard per decoder layer and the root), "
             f"float32, one AdamW step on batch 1 x {SEQ} tokens, the second of {STEPS} steps; bytes per rank per "
             "step. All-gather: the unsharded parameters each all-gather assembles; reduce-scatter: the unsharded "
             "gradients each reduce-scatter reduces. "
             + (f"Other collectives also ran: {others}." if others else "No other collective ran."))
    write_results("fsdp_bytes", rows, table, directory=out_dir, notes=notes)
    print(f"results written to {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
