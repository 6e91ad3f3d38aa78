"""The one-pass regime's time on an H200, predicted from its instruction counts and the floors.

No timing: the one-pass Gluon kernels are compiled for sm_90 here (Triton's bundled ptxas, the
launch's specialisations) and their main loops counted (``lottalora_kernels.tools.sass``); the
counts, the grid each launch gets and the floors below give a predicted time per layer call,
for the seeded layer and for the baselines from the same floors. benchmarks/NOTES.md
("One-pass kernels") states the model, its assumptions and what a GPU must check.

    python -m benchmarks.predict [--quick]
    python -m benchmarks.predict --e2e     # whole models: results/predicted_e2e.json and .md

Writes results/predicted_sm90.json and .md: one row per (direction, M, N, K), with direction
"forward" or "forward+backward", regime, launches, predicted_us, baseline_us (stored bf16
weight + unfused LoRA), predicted_ratio (to that baseline) and plain_us (cuBLAS without LoRA).
With ``--e2e``, the same launch model summed over whole models (``e2e_rows``): the Llama-3-8B
shape's decode at batch 1 and 16 and the 1.26B config's training step, seeded against stored
weights; written to results/predicted_e2e.json and .md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from lottalora_kernels.runtime import cdiv
from lottalora_kernels.seeded_linear import one_pass

from .harness.results import write_results

# H200 SXM floors: bf16 dense tensor cores as sustained by cuBLAS on large GEMMs, the issue rate
# (132 SMs x 4 schedulers x 32 lanes x 1.98 GHz), HBM3e. Figures to plan with, not measurements.
TC_FLOPS = 790e12
ISSUE_RATE = 33e12
HBM_BYTES_PER_S = 4.3e12
SMS = 132
# What a dependent kernel costs beyond its work in a CUDA graph (launch, ramp, tail): on the
# H100 (2026-11-24) the M = 1 decode kernel took 3.6 us for ~1 us of counted work, and the
# baseline's six small kernels ~3 us each.
LAUNCH_S = 3e-6
# One warpgroup alone on an SM issues about half the time (its warps wait on their own
# dependencies); two co-resident programs (the registers allow two) about 85%. Generation and
# the asynchronous MMAs overlap imperfectly: the shorter of the two adds OVERLAP_COST of itself.
ISSUE_EFFICIENCY = {1: 0.5, 2: 0.85}
OVERLAP_COST = 0.25
RANK = 8
MS = (1, 16, 64, 128, 256, 1024, 8192)
NKS = (4096, 8192)


@dataclass(frozen=True)
class Launch:
    """One one-pass launch: BLOCK_M, the grid and its main loop's count."""

    dx: bool
    block_m: int
    tiles: int
    splits: int
    spans_per_split: int
    loop_sass: int  # per thread per span (128 threads a program)


def one_pass_launch(m: int, n: int, k: int, dx: bool, counts: dict, block_m: int | None = None) -> Launch:
    """The launch one_pass makes for an (m, n) x (n, k) call on a 132-SM GPU (its own rules;
    ``block_m`` pins BLOCK_M as a config does)."""
    rows, red, red_span = (k, n, 64) if dx else (n, k, 128)
    block_m, n_m, splits, per_split = one_pass.launch_tiling(
        m, rows, cdiv(red, red_span), RANK, dx, 4, SMS, hopper=True, config={"BLOCK_M": block_m} if block_m else None)
    tiles = cdiv(rows, 256) * n_m
    return Launch(dx, block_m, tiles, splits, per_split, counts[("dx" if dx else "fwd", block_m)])


def one_pass_seconds(m: int, n: int, k: int, dx: bool, counts: dict, block_m: int | None = None) -> float:
    """Predicted time of one one-pass launch: per SM, the generation (issue-bound) and the MMAs
    (tensor-bound) of the programs it holds, overlapped as OVERLAP_COST says, against the
    bytes over HBM; plus LAUNCH_S."""
    launch = one_pass_launch(m, n, k, dx, counts, block_m)
    programs = launch.tiles * launch.splits
    per_sm = cdiv(programs, SMS)  # programs an SM runs over the launch
    resident = min(2, per_sm)
    red_span = 64 if dx else 128
    instr = launch.spans_per_split * launch.loop_sass * 128  # thread-instructions a program
    flops = launch.spans_per_split * 2 * 256 * launch.block_m * red_span * (1 + 16 / 256 * (not dx))  # + xa
    gen = per_sm * instr / (ISSUE_RATE / SMS * ISSUE_EFFICIENCY[resident])
    mma = per_sm * flops / (TC_FLOPS / SMS)
    compute = max(gen, mma) + OVERLAP_COST * min(gen, mma)
    m_pad = cdiv(m, launch.block_m) * launch.block_m
    bytes_ = 2 * (m * (n + k)) + (8 * launch.splits * m_pad * (k if dx else n) if launch.splits > 1 else 0)
    return max(compute, bytes_ / HBM_BYTES_PER_S) + LAUNCH_S


def kernel_seconds(flops: float, bytes_: float) -> float:
    """A cuBLAS GEMM or an elementwise kernel at the floors, plus LAUNCH_S."""
    return max(flops / TC_FLOPS, bytes_ / HBM_BYTES_PER_S) + LAUNCH_S


def stored_floor_s(m: int, nk: int) -> float:
    """A stored-weight layer's floor at these rates: tensor-core time or its bf16 bytes (W, x, y)."""
    return max(2 * m * nk * nk / TC_FLOPS, 2 * (nk * nk + 2 * m * nk) / HBM_BYTES_PER_S)


def gemm_seconds(m: int, n: int, k: int) -> float:
    """(m, k) @ (k, n) in bf16: its FLOPs, or reading both operands and writing the result."""
    return kernel_seconds(2 * m * n * k, 2 * (m * k + k * n + m * n))


def baseline_forward_seconds(m: int, nk: int) -> tuple[float, float]:
    """(cuBLAS with the stored bf16 weight + the unfused LoRA of benchmarks.speed, plain cuBLAS):
    beta * F.linear(x, W) + s * F.linear(F.linear(x, A), B) + bias is three GEMMs and four
    elementwise kernels (beta *, s *, the sum, + bias: ~18 bytes per output element)."""
    plain = gemm_seconds(m, nk, nk)
    lora = gemm_seconds(m, RANK, nk) + gemm_seconds(m, nk, RANK)
    elementwise = 4 * kernel_seconds(0, 0) + 18 * m * nk / HBM_BYTES_PER_S
    return plain + lora + elementwise, plain


def baseline_backward_seconds(m: int, nk: int) -> tuple[float, float]:
    """(the baseline's backward under autograd, plain cuBLAS's dx GEMM): dx = dy' @ W plus the
    LoRA's four small GEMMs (dB, dy' @ B, dA, its dx term), dbeta and dbias reductions and about
    five elementwise kernels (~26 bytes per element of y or x)."""
    plain = gemm_seconds(m, nk, nk)
    lora = 2 * gemm_seconds(m, RANK, nk) + 2 * gemm_seconds(RANK, nk, m)
    elementwise = 7 * kernel_seconds(0, 0) + 26 * m * nk / HBM_BYTES_PER_S
    return plain + lora + elementwise, plain


def seeded_backward_seconds(m: int, nk: int, counts: dict) -> float:
    """The seeded layer's backward: dy_b = dy @ B, the one-pass input gradient with dbeta fused
    (its partials summed: one more launch), dA and dB (one GEMM each) and dbias: six launches."""
    return (gemm_seconds(m, RANK, nk) + one_pass_seconds(m, nk, nk, True, counts) + kernel_seconds(0, 0)
            + 2 * gemm_seconds(RANK, nk, m) + kernel_seconds(0, 2 * m * nk))


def rows(counts: dict, ms=MS, nks=NKS) -> list[dict]:
    """The predicted rows for every (direction, M, N = K)."""
    out = []
    for nk in nks:
        for m in ms:
            fwd = one_pass_seconds(m, nk, nk, False, counts)
            base_fwd, plain_fwd = baseline_forward_seconds(m, nk)
            base_bwd, plain_bwd = baseline_backward_seconds(m, nk)
            cases = [("forward", fwd, 1, base_fwd, plain_fwd),
                     ("forward+backward", fwd + seeded_backward_seconds(m, nk, counts), 7, base_fwd + base_bwd,
                      plain_fwd + plain_bwd)]
            for direction, seeded, launches, base, plain in cases:
                out.append({"direction": direction, "M": m, "N": nk, "K": nk, "regime": "one_pass",
                            "launches": launches, "predicted_us": round(seeded * 1e6, 1),
                            "baseline_us": round(base * 1e6, 1), "predicted_ratio": round(seeded / base, 3),
                            "plain_us": round(plain * 1e6, 1), "plain_ratio": round(seeded / plain, 3)})
    return out


# Whole models. Decode reads a KV cache of DECODE_CONTEXT tokens (128 prompt + half of 128 new);
# a layer runs DECODE_OTHER_KERNELS small kernels besides its linears and attention (two RMSNorms,
# rotary on q and k, the two cache writes, SiLU x up, two residual adds).
DECODE_CONTEXT = 192
DECODE_OTHER_KERNELS = 9
TRAIN_BATCH, TRAIN_SEQ = 8, 1024
# Per layer and training step, the activations' elementwise traffic besides the linears, in
# bf16 values per (token, hidden) element: norms, rotary, residuals, casts, forward and backward.
TRAIN_ELEMENTWISE_VALUES = 60
ADAMW_BYTES_PER_PARAM = 28  # float32 AdamW: reads p, g, m, v, writes p, m, v


def _decoder_linears(hidden: int, inter: int, kv: int) -> list[tuple[str, int, int]]:
    """(name, out_features, in_features) of one LLaMA decoder layer."""
    return [("q_proj", hidden, hidden), ("k_proj", kv, hidden), ("v_proj", kv, hidden), ("o_proj", hidden, hidden),
            ("gate_proj", inter, hidden), ("up_proj", inter, hidden), ("down_proj", hidden, inter)]


def int4_gemm_seconds(m: int, n: int, k: int) -> float:
    """torch's int4 weight-only GEMM at the floors: 4-bit weights plus a bf16 scale and zero per
    128 weights."""
    return kernel_seconds(2 * m * n * k, n * k / 2 + n * k / 128 * 4 + 2 * (m * k + m * n))


def decode_step_seconds(variant: str, batch: int, counts: dict, shape=(4096, 32, 14336, 32, 8, 128256)) -> float:
    """One decode step of a LLaMA shape (hidden, layers, intermediate, heads, KV heads, vocab) at
    ``batch`` in a CUDA graph: the linears (seeded one-pass with a rank-8 adapter, stored bf16 or
    int4), attention over the cache, the small kernels, and the stored bf16 head."""
    hidden, layers, inter, heads, kv_heads, vocab = shape
    kv = hidden // heads * kv_heads
    linear = {"seeded": lambda n, k: one_pass_seconds(batch, n, k, False, counts),
              "bf16": lambda n, k: gemm_seconds(batch, n, k),
              "int4": lambda n, k: int4_gemm_seconds(batch, n, k)}[variant]
    per_layer = sum(linear(n, k) for _, n, k in _decoder_linears(hidden, inter, kv))
    per_layer += kernel_seconds(4 * batch * DECODE_CONTEXT * hidden, 2 * 2 * batch * DECODE_CONTEXT * kv)
    per_layer += DECODE_OTHER_KERNELS * kernel_seconds(0, 6 * batch * hidden)
    return layers * per_layer + gemm_seconds(batch, vocab, hidden) + 2 * kernel_seconds(0, 4 * batch * hidden)


def _general_seeded_backward_seconds(m: int, n: int, k: int, adapter: bool, counts: dict) -> float:
    """``seeded_backward_seconds`` for an (n, k) layer with or without an adapter: the one-pass
    input gradient with dbeta fused and its partials' sum; dy @ B, dA and dB with one."""
    t = one_pass_seconds(m, n, k, True, counts) + kernel_seconds(0, 0)
    if adapter:
        t += gemm_seconds(m, RANK, n) + gemm_seconds(RANK, k, m) + gemm_seconds(n, RANK, m)
    return t


def train_step_seconds(variant: str, counts: dict, shape=(2048, 22, 5632, 16, 16, 32000),
                       batch: int = TRAIN_BATCH, seq: int = TRAIN_SEQ) -> float:
    """One training step (forward, backward, AdamW) of ``benchmarks.train``'s ``variant``: the
    linears as each recipe runs them, and what all three share (flash attention, the head's three
    GEMMs, the elementwise traffic), plus AdamW over the trainable parameters."""
    hidden, layers, inter, heads, kv_heads, vocab = shape
    m = batch * seq
    kv = hidden // heads * kv_heads
    linears = _decoder_linears(hidden, inter, kv)
    per_layer = 0.0
    for name, n, k in linears:
        adapter = name in ("q_proj", "k_proj", "v_proj", "o_proj")
        if variant == "lottalora":
            per_layer += one_pass_seconds(m, n, k, False, counts)
            per_layer += _general_seeded_backward_seconds(m, n, k, adapter, counts)
        else:
            per_layer += 2 * gemm_seconds(m, n, k)  # forward and dx
            if variant == "full":
                per_layer += gemm_seconds(n, k, m)  # dW
            elif adapter:  # PEFT LoRA: two small GEMMs and an add forward, four GEMMs backward
                per_layer += 2 * gemm_seconds(m, RANK, k) + kernel_seconds(0, 6 * m * n)
                per_layer += 2 * gemm_seconds(m, RANK, n) + gemm_seconds(RANK, k, m) + gemm_seconds(n, RANK, m)
    attention_flops = 2 * batch * seq * seq * hidden  # causal QK^T and PV, half the square each
    per_layer += kernel_seconds(3.5 * attention_flops, 0)  # forward once, backward 2.5 times
    per_layer += kernel_seconds(0, 2 * TRAIN_ELEMENTWISE_VALUES * m * hidden + 2 * 16 * m * inter)
    head = 3 * gemm_seconds(m, vocab, hidden)  # forward, dx, dW (the head is trained)
    linear_params = layers * sum(n * k for _, n, k in linears)
    trainable = 2 * vocab * hidden + (2 * layers + 1) * hidden
    if variant == "full":
        trainable += linear_params
        head += kernel_seconds(0, 6 * linear_params)  # autocast's bf16 copies of the float32 weights
    else:
        trainable += layers * 4 * RANK * (hidden + hidden) + (layers * 7 if variant == "lottalora" else 0)
    return layers * per_layer + head + kernel_seconds(0, ADAMW_BYTES_PER_PARAM * trainable)


def e2e_rows(counts: dict) -> list[dict]:
    """Predicted decode tokens/s of the 8B shape (batch 1 and 16) for seeded, stored bf16 and int4
    weights, and training tokens/s of the 1.26B config for the three recipes, with the ratios."""
    out = []
    for batch in (1, 16):
        times = {v: decode_step_seconds(v, batch, counts) for v in ("seeded", "bf16", "int4")}
        for variant, t in times.items():
            out.append({"case": "decode 8B", "batch": batch, "variant": variant, "step_us": round(t * 1e6, 1),
                        "tokens_per_s": round(batch / t, 1), "vs_bf16": round(times["bf16"] / t, 2)})
    times = {v: train_step_seconds(v, counts) for v in ("lottalora", "peft_lora", "full")}
    for variant, t in times.items():
        out.append({"case": "train 1.26B", "batch": TRAIN_BATCH, "variant": variant, "step_us": round(t * 1e6, 1),
                    "tokens_per_s": round(TRAIN_BATCH * TRAIN_SEQ / t, 1),
                    "vs_peft_lora": round(times["peft_lora"] / t, 2)})
    return out


def e2e_table(predicted: list[dict]) -> str:
    lines = ["| case | batch | variant | step us | tokens/s | speed vs bf16 / PEFT LoRA |", "|---|---|---|---|---|---|"]
    for r in predicted:
        ratio = r.get("vs_bf16", r.get("vs_peft_lora"))
        lines.append(f"| {r['case']} | {r['batch']} | {r['variant']} | {r['step_us']:,} | {r['tokens_per_s']:,} | "
                     f"{ratio}x |")
    return "\n".join(lines)


def counted_loops(arch: int = 90) -> dict:
    """Main-loop SASS per thread per span of the launches ``rows`` needs (rank 8: padded to 16)."""
    from lottalora_kernels.tools.sass import compile_one_pass, inspect

    counts = {}
    for direction, block_ms in (("fwd", (16, 32, 64)), ("dx", (16, 32, 64))):
        for block_m in block_ms:
            split = block_m < 64  # the split-K launches of small M; the count is the same within 2%
            kernel = compile_one_pass(direction, "bf16", block_m, RANK, split, arch)
            counts[(direction, block_m)] = inspect(kernel)["main_loop_sass"]
    return counts


def table(predicted: list[dict]) -> str:
    lines = ["| direction | M | N = K | launches | predicted us | baseline us | ratio | plain cuBLAS us | x plain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in predicted:
        lines.append(f"| {r['direction']} | {r['M']} | {r['N']} | {r['launches']} | {r['predicted_us']:,} | "
                     f"{r['baseline_us']:,} | {r['predicted_ratio']} | {r['plain_us']:,} | {r['plain_ratio']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, nothing written (smoke run)")
    parser.add_argument("--e2e", action="store_true", help="whole-model predictions (predicted_e2e.*) instead")
    args = parser.parse_args(argv)
    counts = counted_loops()
    if args.e2e:
        predicted = e2e_rows(counts)
        notes = (f"Predicted, not measured: the launch model of the per-layer rows (predicted_sm90) summed over "
                 f"whole models. Floors: tensor cores {TC_FLOPS / 1e12:.0f} TFLOP/s, HBM {HBM_BYTES_PER_S / 1e12:.1f} "
                 f"TB/s, {LAUNCH_S * 1e6:.0f} us per dependent kernel (a CUDA graph: no host time). Decode: "
                 f"context {DECODE_CONTEXT} tokens, the head and embeddings stored bf16 in every variant. Training: "
                 f"the recipes of benchmarks.train, batch {TRAIN_BATCH} x {TRAIN_SEQ}. What is modelled and what "
                 "is not: benchmarks/NOTES.md, \"End-to-end predictions\".")
        write_results("predicted_e2e", predicted, e2e_table(predicted), notes=notes,
                      device="none (predicted for an H200 from sm_90 counts)")
        print(e2e_table(predicted))
        return 0
    predicted = rows(counts, ms=(1, 8192), nks=(4096,)) if args.quick else rows(counts)
    text = table(predicted)
    print(text)
    if not args.quick:
        notes = (f"Predicted from counts, not measured. Floors: tensor cores {TC_FLOPS / 1e12:.0f} TFLOP/s, issue "
                 f"{ISSUE_RATE / 1e12:.0f} T thread-instructions/s, HBM {HBM_BYTES_PER_S / 1e12:.1f} TB/s, "
                 f"{LAUNCH_S * 1e6:.0f} us per dependent kernel; one-pass main loops counted for sm_90 (SASS per "
                 f"thread per span, rank {RANK}): " + ", ".join(f"{d} BLOCK_M={b}: {c}" for (d, b), c in counts.items())
                 + ". Model and assumptions: benchmarks/NOTES.md, \"One-pass kernels\".")
        write_results("predicted_sm90", predicted, text, notes=notes,
                      device="none (predicted for an H200 from sm_90 counts)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
