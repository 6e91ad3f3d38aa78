"""The CPU path's figures: pytest-benchmark medians (benchmarks/test_cpu_reference.py), the
ratios within each group, and the peak memory of a seeded forward against its dense weight.

    python -m benchmarks.cpu_reference [--threads N]   # writes benchmarks/results/cpu_reference.*
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .harness.results import write_results

ROOT = Path(__file__).resolve().parent.parent
# The peak resident memory a forward adds, in a fresh process: the layer and input are made and
# a 1-column layer runs once (imports, op registration), then ru_maxrss (a high-water mark)
# before and after the first forward: what its temporaries take at their peak.
_PEAK_SCRIPT = """
import os, resource, sys, torch, lottalora
os.environ["LOTTALORA_BACKEND"] = "torch"
torch.set_num_threads(int(sys.argv[2]))
kind, m, nk = sys.argv[1], int(sys.argv[3]), 4096
layer = torch.nn.Linear(nk, nk) if kind == "linear" else lottalora.Linear(nk, nk, rank=8)
x = torch.randn(m, nk)
tiny = torch.nn.Linear(8, 8) if kind == "linear" else lottalora.Linear(8, 8, rank=8)
with torch.no_grad():
    tiny(torch.randn(1, 8))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    y = layer(x)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


def forward_peak_bytes(kind: str, m: int, threads: int) -> int:
    """Peak resident bytes one forward adds over the process's earlier peak."""
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, kind, str(threads), str(m)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "bench.json"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "benchmarks/test_cpu_reference.py", "--benchmark-only",
                        f"--benchmark-json={raw}", "-p", "no:cacheprovider"], cwd=ROOT, env=env, check=True)
        data = json.loads(raw.read_text())
    rows = [{"group": b["group"], "name": b["name"], "median_s": b["stats"]["median"], "iqr_s": b["stats"]["iqr"],
             "rounds": b["stats"]["rounds"]} for b in data["benchmarks"]]
    by_group: dict[str, list[dict]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(r)
    lines = ["| group | case | median ms | IQR ms | rounds | ratio |", "|---|---|---|---|---|---|"]
    for group, members in by_group.items():
        base = max(members, key=lambda r: ("gaussian" in r["name"]) or ("nn.Linear" in r["name"])
                   or ("stored" in r["name"]))
        for r in members:
            ratio = r["median_s"] / base["median_s"]
            r["ratio_to_baseline"] = ratio
            case = r["name"].split("[", 1)[-1].rstrip("]")
            lines.append(f"| {group} | {case} | {r['median_s'] * 1e3:.2f} | {r['iqr_s'] * 1e3:.2f} | {r['rounds']} | "
                         f"{ratio:.2f}x |")
    threads = args.threads or int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                                 capture_output=True, text=True).stdout)
    memory = []
    for m in (1, 64):
        seeded = forward_peak_bytes("seeded", m, threads)
        dense = 4 * 4096 * 4096
        memory.append({"M": m, "seeded_forward_peak_bytes": seeded, "dense_weight_bytes": dense,
                       "ratio": seeded / dense})
        lines.append(f"| forward peak memory M={m} 4096x4096 | seeded v2, above the layer | "
                     f"{seeded / 2**20:.1f} MiB | - | 1 | {seeded / dense:.2f}x the 64 MiB dense weight |")
    table = "\n".join(lines)
    print(table)
    write_results("cpu_reference", {"benchmarks": rows, "memory": memory}, table,
                  notes=("The torch backend regenerates W_seed on every call (stream v2: packed signs, one "
                         "generation per training step); baselines are nn.Linear, stream v1 gaussian, and the "
                         "same MLP with its backbones stored. Ratios: median over the group's baseline."))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
