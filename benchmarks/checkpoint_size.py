"""Seed-only checkpoint size: what lottalora.save writes for LLaMA-style configs, against the
same model with stored fp16 weights, and the peak host memory of building and saving it.

    python -m benchmarks.checkpoint_size [--configs 374M 1.26B]   # results/checkpoint_size.*
    python -m benchmarks.checkpoint_size --quick    # tiny config (CI), results under --out or a temp dir
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .harness.results import RESULTS_DIR, write_results

MIB = 2**20
FULL_CONFIGS = ["374M", "1.26B", "2.7B"]


def measure_one(name: str) -> dict:
    """Build (meta + materialize, bf16), save, and read back the sizes; in this process."""
    import resource

    import torch

    import lottalora

    from .harness.llama import build, parameter_count

    model = build(name, "lottalora", dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        lottalora.save(model, tmp)
        stored = sum(p.stat().st_size for p in Path(tmp).iterdir())
    dense_fp16 = 2 * parameter_count(name)
    return {"config": name, "dense_params": parameter_count(name), "checkpoint_bytes": stored,
            "dense_fp16_bytes": dense_fp16, "ratio": dense_fp16 / stored,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny config only (smoke run)")
    parser.add_argument("--configs", nargs="+", help=f"configs to run (default {FULL_CONFIGS})")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results; "
                                                  "a temporary one with --quick)")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one)))
        return 0
    configs = ["tiny"] if args.quick else (args.configs or FULL_CONFIGS)
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="lottalora-checkpoint-")) if args.quick else RESULTS_DIR)
    rows = []
    for name in configs:  # one fresh process each, so the peak is this model's
        out = subprocess.run([sys.executable, "-m", "benchmarks.checkpoint_size", "--one", name],
                             capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lines = ["| config | checkpoint MiB | stored fp16 weights MiB | ratio | peak RSS of build + save MiB |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['checkpoint_bytes'] / MIB:,.1f} | {r['dense_fp16_bytes'] / MIB:,.0f} | "
                     f"{r['ratio']:.1f}x | {r['peak_rss_bytes'] / MIB:,.0f} |")
    table = "\n".join(lines)
    print(table)
    write_results("checkpoint_size", rows, table, directory=out_dir, notes=(
        "lottalora recipe (q,k,v,o seeded + rank-8 adapters, MLP seeded with no adapter; embeddings, "
        "norms and untied head stored), bf16, built on the meta device. Peak RSS is the whole process "
        "(Python and torch included)."))
    print(f"results written to {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
