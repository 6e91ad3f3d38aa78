"""Does stream v2's binary backbone train as well as stream v1's gaussian one? Measured through
the library's own demo tasks (sklearn digits, MNIST-1D) at ranks 8 and 32 over 3 seeds.

    python -m benchmarks.stream_science [--seeds 0 1 2] [--quick]
    # writes benchmarks/results/stream_science.{json,md}

Each (task, seed) trains the full model once and, for each init, the seeded MLP at each rank
(``lottalora.demo.run_sweep``: init "gaussian" is stream v1, "rademacher" is stream v2, the
default). The paper reports that the distribution barely matters (binary 96.4% vs gaussian
96.2% on MNIST at rank 8); this checks that it holds for this library's binary stream.
"""

from __future__ import annotations

import argparse
import statistics

from lottalora.demo import run_sweep

from .results import write_results

INITS = {"gaussian": "stream v1 gaussian", "rademacher": "stream v2 binary (default)"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--tasks", nargs="+", default=["digits", "mnist1d"])
    parser.add_argument("--quick", action="store_true", help="one seed, rank 8, digits, 3 epochs (smoke run)")
    args = parser.parse_args(argv)
    epochs = None
    if args.quick:
        args.seeds, args.ranks, args.tasks, epochs = [0], [8], ["digits"], 3
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            for init in INITS:
                full, sweep = run_sweep(args.ranks, task=task, init=init, seed=seed, epochs=epochs,
                                        show_progress=False)
                for r in sweep:
                    rows.append({"task": task, "seed": seed, "init": init, "rank": r.rank, "accuracy": r.test_accuracy,
                                 "full_accuracy": full.test_accuracy, "betas": r.betas})
                print(f"{task} seed {seed} {init}: full {full.test_accuracy:.4f} "
                      + " ".join(f"r{r.rank} {r.test_accuracy:.4f}" for r in sweep), flush=True)
    lines = ["| task | rank | full training | stream v1 gaussian | stream v2 binary | v2 - v1 |",
             "|---|---|---|---|---|---|"]
    summary = []
    for task in args.tasks:
        for rank in args.ranks:
            def stats(init, key="accuracy"):
                values = [r[key] for r in rows if r["task"] == task and r["rank"] == rank and r["init"] == init]
                return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
            full_mean, _ = stats("gaussian", "full_accuracy")
            (g, gs), (b, bs) = stats("gaussian"), stats("rademacher")
            summary.append({"task": task, "rank": rank, "full": full_mean, "gaussian_mean": g, "gaussian_sd": gs,
                            "binary_mean": b, "binary_sd": bs, "difference": b - g})
            lines.append(f"| {task} | {rank} | {full_mean:.4f} | {g:.4f} +- {gs:.4f} | {b:.4f} +- {bs:.4f} | "
                         f"{b - g:+.4f} |")
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        write_results("stream_science", {"runs": rows, "summary": summary}, table,
                      notes=f"Test accuracy, mean +- sd over seeds {args.seeds}; the demo's recipes per task.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
