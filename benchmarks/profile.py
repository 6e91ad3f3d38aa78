"""Where a seeded layer's time goes: torch.profiler's kernel and CPU-op tables for one shape.

    python -m benchmarks.profile --m 8192 --nk 4096            # forward + backward
    python -m benchmarks.profile --m 1 --nk 4096 --no-backward # decode

Prints the top CUDA kernels by device time and the top CPU ops by self CPU time, for the seeded
layer and for the stored-weight baseline (cuBLAS + unfused LoRA), after warm-up.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import lottalora


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=8192)
    parser.add_argument("--nk", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--rows", type=int, default=12, help="table rows to print")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("profiling needs a CUDA GPU")
    dtype = torch.bfloat16
    layer = lottalora.Linear(args.nk, args.nk, rank=args.rank, seed=1, device="cuda", dtype=dtype)
    w = layer.backbone_weight(dtype=dtype)
    x = torch.randn(args.m, args.nk, device="cuda", dtype=dtype, requires_grad=not args.no_backward)
    dy = torch.randn(args.m, args.nk, device="cuda", dtype=dtype)

    def baseline():
        return layer.beta * F.linear(x, w) + layer.scaling * F.linear(F.linear(x, layer.lora_A), layer.lora_B) + \
            layer.bias

    for name, fn in [("seeded", lambda: layer(x)), ("cublas+lora", baseline)]:
        def step():
            with torch.set_grad_enabled(not args.no_backward):
                y = fn()
                if not args.no_backward:
                    y.backward(dy)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.iters):
                step()
            torch.cuda.synchronize()
        print(f"\n=== {name}: M={args.m} N=K={args.nk} rank={args.rank} "
              f"{'forward' if args.no_backward else 'forward+backward'}, {args.iters} iterations ===")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                        max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
