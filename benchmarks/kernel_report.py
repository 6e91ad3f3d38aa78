"""Compile every shipped kernel for a GPU target without a GPU and count what the hardware would run.

Triton lowers to PTX and, with the ptxas it bundles, to a cubin for any NVIDIA target on a
machine with no GPU. Each kernel is compiled with the specialisations a real launch gets
(16-divisible pointers, sizes and leading strides; unit strides as the constant 1) and the
report reads off registers, spills and the SASS of its main loop (the body of the loop that
generates the backbone), divided by the backbone values one thread generates per iteration:
``main_loop_sass_per_value``. From that and the H100's published rates it predicts the time of
an N = K = 4096 layer at M = 1 and M = 8192 against the stored-weight floor. No timing here:
benchmarks/NOTES.md compares these predictions with GPU measurements when a GPU is lent.

    python -m benchmarks.kernel_report [--arch 90] [--quick]
"""

from __future__ import annotations

import argparse
import math

from lottalora_kernels.seeded_linear.decode import MAX_M as DECODE_MAX_M
from lottalora_kernels.seeded_linear.one_pass_v1 import AUTOTUNE_CONFIGS
from lottalora_kernels.stream import spec
from lottalora_kernels.tools.sass import (
    compile_decode_v2,
    compile_generator_v1,
    compile_generator_v2,
    compile_one_pass,
    compile_one_pass_v1,
    inspect,
    one_pass_values_per_thread,
)

from . import predict as h200
from .harness.results import write_results

# H100 SXM: 132 SMs x 4 schedulers x 32 lanes x 1.83 GHz thread-instructions/s (the issue rate,
# a ceiling for any mix; IMAD and LOP3 run on separate half-rate pipes), HBM3 bytes/s, dense
# bf16 tensor-core FLOP/s. Published figures, not measurements.
ISSUE_RATE = 30.9e12
HBM_BYTES_PER_S = 3.35e12
TC_FLOPS = 989.4e12
PREDICT_NK = 4096
PREDICT_M = (1, 8192)


def stored_floor_s(m: int, nk: int = PREDICT_NK) -> float:
    """The stored-weight layer's floor: tensor-core time or bf16 bytes (W, x, y) over HBM."""
    return max(2 * m * nk * nk / TC_FLOPS, 2 * (nk * nk + 2 * m * nk) / HBM_BYTES_PER_S)


def _row(kernel: str, stream_version: int, init: str, config: str, info: dict, values_per_iteration: float,
         predict, floor=None) -> dict:
    """One report row; ``predict(m, sass_per_value) -> seconds`` gives the predicted time and
    ``floor(m) -> seconds`` the stored-weight floor it is compared with (stored_floor_s)."""
    floor = floor or stored_floor_s
    sass = info["main_loop_sass"] if info["main_loop_sass"] is not None else info["sass_total"]
    per_value = sass / values_per_iteration
    row = {"kernel": kernel, "stream_version": stream_version, "init": init, "config": config,
           "main_loop_sass_per_value": round(per_value, 2), "values_per_thread_per_iteration": values_per_iteration,
           **info}
    for m in PREDICT_M:
        t = predict(m, per_value)
        row[f"predicted_us_M{m}"] = round(t * 1e6, 2)
        row[f"predicted_ratio_to_stored_M{m}"] = round(t / floor(m), 2)
    return row


def _generation_s(values: float, sass_per_value: float) -> float:
    return values * sass_per_value / ISSUE_RATE


def decode_rows(arch: int, quick: bool = False) -> list[dict]:
    """Stream v2's decode kernels: the shipped configs, and Philox-7 for the round-count record."""
    rows, nk = [], PREDICT_NK
    variants = [(direction, "bf16", 8, spec.PHILOX_ROUNDS) for direction in ("fwd", "dx")] if quick else \
        [(direction, d, m, spec.PHILOX_ROUNDS) for direction in ("fwd", "dx") for d in ("bf16", "fp16")
         for m in (8, 16, 32)] + [("fwd", "bf16", 8, 7)]
    for direction, dtype, m_pad, rounds in variants:
        info = inspect(compile_decode_v2(dtype, 4, m_pad, rounds, arch, direction))
        values = spec.V2_ROW_SPAN * spec.V2_COL_SPAN / 32  # a warp's span over its 32 threads

        def predict(m, per_value, m_pad=m_pad):
            # Kernel 1 generates W once per call of <= MAX_M rows; split-K partials (4 splits per
            # 256-row block, fp32) and the epilogue's bytes go through HBM.
            calls = math.ceil(m / DECODE_MAX_M)
            partial_bytes = calls * 32 * min(m, DECODE_MAX_M) * nk * 4 * 2
            return calls * _generation_s(nk * nk, per_value) + (partial_bytes + 4 * m * nk) / HBM_BYTES_PER_S
        label = f"seeded_decode {direction} (Gluon, shipped)" if rounds == spec.PHILOX_ROUNDS else \
            f"seeded_decode {direction} (Gluon) probe with Philox-7, not shipped"
        rows.append(_row(label, 2, "rademacher", f"{dtype} 4 warps M_PAD={m_pad}", info, values, predict))
    return rows


def generator_rows(arch: int, quick: bool = False) -> list[dict]:
    """The generators: v2's Gluon one (two-phase phase 1) and v1's (backbone_weight, v1 two-phase)."""
    rows, nk = [], PREDICT_NK

    def two_phase(m, per_value):
        # Phase 1 once, phase 2 at the tensor-core floor; the float32 product makes one round
        # trip (4 + 4 bytes per output) and y is written once (2 bytes).
        return (_generation_s(nk * nk, per_value) + 2 * m * nk * nk / TC_FLOPS
                + (m * nk * 10 + 2 * m * nk) / HBM_BYTES_PER_S)
    for dtype in (("bf16",) if quick else ("bf16", "fp32")):
        info = inspect(compile_generator_v2(dtype, 4, arch))
        values = spec.V2_ROW_SPAN * spec.V2_COL_SPAN / 32
        rows.append(_row("backbone_gen v2 (Gluon): two-phase phase 1", 2, "rademacher", f"{dtype} out, 4 warps",
                         info, values, two_phase))
    for init in (("gaussian",) if quick else spec.VERSION_INITS[1]):
        info = inspect(compile_generator_v1(init, 32, 64, "bf16", arch))
        rows.append(_row("backbone_gen v1: two-phase phase 1", 1, init, "bf16 out 32x64, 4 warps", info,
                         32 * 64 / 128, two_phase))
    return rows


def one_pass_v1_rows(arch: int, quick: bool = False) -> list[dict]:
    """Stream v1's one-pass kernel, every autotune config, forward and input gradient."""
    rows, nk = [], PREDICT_NK
    configs = AUTOTUNE_CONFIGS[:1] if quick else AUTOTUNE_CONFIGS
    for cfg in configs:
        blocks = cfg.kwargs
        for forward in (True, False):
            for init in (("gaussian",) if quick or not forward else ("gaussian", "rademacher")):
                info = inspect(compile_one_pass_v1(forward, "bf16", blocks, init, arch, cfg.num_warps,
                                                     cfg.num_stages))
                values = blocks["BLOCK_Q"] * blocks["BLOCK_P"] / (32 * cfg.num_warps)

                def predict(m, per_value, block_m=blocks["BLOCK_M"]):
                    # W is regenerated once per BLOCK_M rows of x.
                    return max(math.ceil(m / block_m) * _generation_s(nk * nk, per_value), stored_floor_s(m))
                config = "x".join(str(blocks[b]) for b in ("BLOCK_M", "BLOCK_P", "BLOCK_Q")) + \
                    f" w{cfg.num_warps} s{cfg.num_stages}"
                rows.append(_row(f"one_pass_v1 {'fwd' if forward else 'dx+dbeta'}", 1, init, config,
                                 info, values, predict))
    return rows


# The one-pass configs counted: every BLOCK_M and LoRA shape a launch picks (split-K where small
# M gets it), on sm_90 (wgmma) and, for the mma.sync body, sm_80 and sm_89.
ONE_PASS_REPORT = [("fwd", 16, 0, True), ("fwd", 16, 16, True), ("fwd", 32, 16, True), ("fwd", 32, 32, False),
                   ("fwd", 64, 0, False), ("fwd", 64, 16, False), ("dx", 16, 16, True), ("dx", 32, 16, True),
                   ("dx", 32, 32, False), ("dx", 64, 0, False), ("dx", 64, 16, False)]
ONE_PASS_MMA_SYNC_REPORT = [("fwd", 64, 16, False), ("fwd", 16, 16, True), ("dx", 32, 16, False)]


def one_pass_rows(arch: int, quick: bool = False) -> list[dict]:
    """Stream v2's one-pass Gluon kernel (issue 19): wgmma configs on ``arch`` (90), mma.sync
    ones on sm_80 and sm_89; predictions for an H200 from benchmarks.predict's model."""
    rows = []
    cases = [(arch, c) for c in (ONE_PASS_REPORT[5:6] if quick else ONE_PASS_REPORT)]
    if not quick:
        cases += [(a, c) for a in (80, 89) for c in ONE_PASS_MMA_SYNC_REPORT]
    for target, (direction, block_m, rank, split) in cases:
        info = inspect(compile_one_pass(direction, "bf16", block_m, rank, split, target))
        values = one_pass_values_per_thread(direction)

        def predict(m, per_value, direction=direction, block_m=block_m, loop=info["main_loop_sass"]):
            counts = {(direction, block_m): loop}
            return h200.one_pass_seconds(m, PREDICT_NK, PREDICT_NK, direction == "dx", counts, block_m)
        mma = "wgmma" if target == 90 else "mma.sync"
        config = f"bf16 sm_{target} ({mma}) BLOCK_M={block_m} rank pad {max(16, rank) if rank else 0}" + \
            (" split-K" if split else "")
        rows.append(_row(f"one_pass {direction} (Gluon; H200 model)", 2, "rademacher", config, info, values, predict,
                         lambda m: h200.stored_floor_s(m, PREDICT_NK)))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| kernel | v | init | config | regs | spills st/ld | main-loop SASS | SASS/value | "
             "M=1 us (x stored) | M=8192 us (x stored) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['kernel']} | {r['stream_version']} | {r['init']} | {r['config']} | {r['registers']} | "
            f"{r['spill_stores']}/{r['spill_loads']} | {r['main_loop_sass'] or '-'} | "
            f"{r['main_loop_sass_per_value']} | {r['predicted_us_M1']:,} ({r['predicted_ratio_to_stored_M1']}x) | "
            f"{r['predicted_us_M8192']:,} ({r['predicted_ratio_to_stored_M8192']}x) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="SM version, e.g. 90 for H100/H200")
    parser.add_argument("--quick", action="store_true", help="one config of each kernel (smoke run)")
    args = parser.parse_args(argv)
    rows = decode_rows(args.arch, args.quick) + generator_rows(args.arch, args.quick) + \
        one_pass_v1_rows(args.arch, args.quick) + one_pass_rows(args.arch, args.quick)
    text = table(rows)
    print(text)
    if not args.quick:
        notes = (f"Predictions: N = K = {PREDICT_NK}, bf16; issue rate {ISSUE_RATE / 1e12:.1f} T "
                 "thread-instructions/s, "
                 f"HBM {HBM_BYTES_PER_S / 1e12:.2f} TB/s, tensor cores {TC_FLOPS / 1e12:.0f} TFLOP/s (H100 SXM, "
                 "published); ratios against the stored-weight floor (tensor-core time or bytes). "
                 "For kernels without a loop, SASS/value is the whole kernel per value. The one_pass rows (issue "
                 "19) are predicted for an H200 instead (benchmarks.predict: 790 TFLOP/s, 33 T/s, 4.3 TB/s, 3 us "
                 "a launch) and compared with its stored-weight floor. Calibration: on an "
                 "H100 (2026-11-24, benchmarks/NOTES.md) the forward decode kernel at M = 1 took 3.6 us, "
                 "2.8x its prediction here.")
        write_results(f"kernel_report_sm{args.arch}", rows, text, notes=notes,
                      device=f"none (compiled for sm_{args.arch} with Triton's bundled ptxas)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
