"""Run the CPU pytest-benchmarks (benchmarks/test_cpu_reference.py) and write their medians.

    python -m benchmarks.cpu_reference      # writes benchmarks/results/cpu_reference.{json,md}
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .results import write_results


def main(argv=None) -> int:
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "bench.json"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "benchmarks/test_cpu_reference.py",
                        "--benchmark-only", f"--benchmark-json={raw}"], cwd=root, check=True)
        data = json.loads(raw.read_text())
    rows = [{"name": b["name"], "median_s": b["stats"]["median"], "iqr_s": b["stats"]["iqr"],
             "rounds": b["stats"]["rounds"]} for b in data["benchmarks"]]
    medians = {r["name"]: r["median_s"] for r in rows}
    lines = ["| benchmark | median ms | IQR ms | rounds | vs nn.Linear |", "|---|---|---|---|---|"]
    for r in rows:
        twin = r["name"].replace("test_seeded_forward_cpu", "test_stored_linear_forward_cpu")
        ratio = f"{r['median_s'] / medians[twin]:.1f}x" if twin != r["name"] and twin in medians else "-"
        lines.append(f"| {r['name']} | {r['median_s'] * 1e3:.3f} | {r['iqr_s'] * 1e3:.3f} | {r['rounds']} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    write_results("cpu_reference", rows, table,
                  notes="The torch backend (PyTorch reference) regenerates W_seed on every call; "
                        "nn.Linear reads a stored weight. Parameters: [M-N=K].")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
