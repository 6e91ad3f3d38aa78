"""The decode regime's launch choices, timed on a GPU: warps per program and split-K count.

    python -m benchmarks.decode_tuning [--out DIR]      # GPU only; one device call (~2 min)

The defaults (``seeded_decode.split_k_for``: about four programs per SM, at most MAX_SPLITS
splits; four warps) were set from instruction counts. Each split writes an (M, N) float32
partial sum that the epilogue reads back, so at M = 16-32 fewer, longer splits may pay where at
M = 1 many short ones do (benchmarks/NOTES.md). This sweeps both for the whole decode forward
(x @ A^T programs and epilogue included), bf16, rank 8, as CUDA-graph medians, and marks the
default and the fastest choice per shape; ``seeded_decode`` is then tuned from the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .harness.results import RESULTS_DIR, publish

SHAPES = [(m, nk) for nk in (4096, 8192) for m in (1, 16, 32)]
NUM_WARPS = (2, 4)
SPLITS = (4, 8, 16, 32, 64)


def tune_shape(m: int, nk: int, timer, device: str = "cuda") -> list[dict]:
    """Rows of (M, NK, num_warps, split_k, default, seconds, best) for one shape; ``timer(fn)``
    gives fn's seconds."""
    from lottalora_kernels.seeded_linear import decode as seeded_decode
    from lottalora_kernels.stream import spec

    dtype, device = torch.bfloat16, torch.device(device)
    x = torch.randn(m, nk, device=device, dtype=dtype)
    A = torch.randn(8, nk, device=device, dtype=dtype) / nk**0.5
    B = torch.randn(nk, 8, device=device, dtype=dtype)
    bias = torch.randn(nk, device=device, dtype=dtype)
    beta = torch.tensor(1.0, device=device)

    def forward(num_warps=None, split_k=None):
        return seeded_decode.decode_fwd(x, seed=1, stream=0, out_features=nk, lora_A=A, lora_B=B, beta=beta,
                                               bias=bias, scale=0.5, num_warps=num_warps, split_k=split_k)
    n_spans = -(-nk // spec.V2_COL_SPAN)
    # What the launches really run: a split count is rounded so that no split is empty.
    default_split, _ = seeded_decode.launch_splits(
        n_spans, seeded_decode.split_k_for(-(-nk // (spec.V2_ROW_SPAN * 4)), n_spans, device))
    rows = [{"M": m, "NK": nk, "num_warps": 4, "split_k": default_split, "default": True,
             "seconds": timer(lambda: forward())}]
    tried = {(4, default_split)}
    for num_warps in NUM_WARPS:
        for asked in SPLITS:
            split_k, _ = seeded_decode.launch_splits(n_spans, min(asked, n_spans))
            if (num_warps, split_k) not in tried:
                tried.add((num_warps, split_k))
                rows.append({"M": m, "NK": nk, "num_warps": num_warps, "split_k": split_k, "default": False,
                             "seconds": timer(lambda w=num_warps, s=split_k: forward(w, s))})
    best = min(rows, key=lambda r: r["seconds"])
    for r in rows:
        r["best"] = r is best
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("tuning the decode launch needs a CUDA GPU")
    from triton.testing import do_bench_cudagraph

    def timer(fn):
        return do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e-3
    rows = [row for m, nk in SHAPES for row in tune_shape(m, nk, timer)]
    from lottalora_kernels.gluon import gluon_failed

    if gluon_failed("seeded_decode"):  # every row after the failure timed the plain-Triton twin
        parser.error("the Gluon decode kernel did not compile here: these rows would time its twin")
    table = ["| M | N = K | warps | splits | us | |", "|---|---|---|---|---|---|"]
    for r in rows:
        mark = " ".join(word for word, on in (("default", r["default"]), ("best", r["best"])) if on)
        table.append(f"| {r['M']} | {r['NK']} | {r['num_warps']} | {r['split_k']} | {r['seconds'] * 1e6:.1f} "
                     f"| {mark} |")
    notes = "Decode forward (kernel with its x @ A^T programs, then the epilogue), bf16, rank 8, CUDA-graph medians."
    publish("decode_tuning", rows, "\n".join(table), notes=notes, directory=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
