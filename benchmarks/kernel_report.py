"""Compile the kernels for a GPU target without a GPU and report what the hardware would run.

Triton can lower to PTX and, with the ptxas it bundles, to a cubin for any NVIDIA target on a
machine with no GPU. This reads off registers, spills and the SASS instruction mix of each
kernel variant, and the SASS instructions per generated backbone value of the generator: the
instruction-count side of the performance model (benchmarks/NOTES.md). No timing here.

    python -m benchmarks.kernel_report [--arch 90] [--quick]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lottalora_kernels import stream_spec as spec
from lottalora_kernels.backbone_gen import _backbone_gen_kernel
from lottalora_kernels.stream_v1 import backbone_tile
from lottalora_kernels.seeded_matmul import AUTOTUNE_CONFIGS, _seeded_matmul_kernel

from .results import write_results

_TL = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16}
_INT_ARGS = ["M", "P", "Q", "R", "stride_am", "stride_aq", "stride_lom", "stride_lor", "stride_lmr",
             "stride_lmp", "stride_om", "stride_op", "stride_xm", "stride_xp",
             "seed_lo", "seed_hi", "stream_lo", "stream_hi"]


def _bin_dir() -> Path:
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def compile_seeded_matmul(forward: bool, dtype: str, config: dict, init: str = "gaussian", arch: int = 90,
                          num_warps: int = 4, num_stages: int = 3):
    """The fused kernel compiled for sm_<arch>: forward (x @ W^T) or input gradient (+ dbeta)."""
    sig = {name: f"*{dtype}" for name in ["a_ptr", "lo_ptr", "lmat_ptr", "bias_ptr", "out_ptr", "x_ptr"]}
    sig.update(beta_ptr="*fp32", dbeta_ptr="*fp32", value_scale="fp32", lora_scale="fp32", M_BUCKET="i32")
    sig.update({name: "i32" for name in _INT_ARGS})
    constexprs = dict(W_TRANSPOSED=forward, INIT=spec.INIT_CODES[init], HAS_LORA=True, HAS_BIAS=forward,
                      WRITE_OUT=True, DBETA=not forward, DOT_DTYPE=_TL[dtype], INPUT_PRECISION="ieee",
                      BLOCK_R=16, **config)
    sig.update({name: "constexpr" for name in constexprs})
    return triton.compile(ASTSource(_seeded_matmul_kernel, sig, constexprs=constexprs),
                          target=GPUTarget("cuda", arch, 32),
                          options={"enable_fp_fusion": False, "num_warps": num_warps, "num_stages": num_stages})


def compile_generator(init: str, block_rows: int = 32, block_cols: int = 64, arch: int = 90, num_warps: int = 4):
    """The standalone generation kernel compiled for sm_<arch>."""
    sig = {"out_ptr": "*fp32", "scale": "fp32"}
    sig.update({n: "i32" for n in ["n_rows", "n_cols", "row_start", "col_start", "stride_out_r",
                                   "stride_out_c", "seed_lo", "seed_hi", "stream_lo", "stream_hi"]})
    constexprs = {"INIT": spec.INIT_CODES[init], "BLOCK_ROWS": block_rows, "BLOCK_COLS": block_cols}
    sig.update({name: "constexpr" for name in constexprs})
    return triton.compile(ASTSource(_backbone_gen_kernel, sig, constexprs=constexprs),
                          target=GPUTarget("cuda", arch, 32),
                          options={"enable_fp_fusion": False, "num_warps": num_warps})


def compile_candidate(variant: str, rounds: int, block_rows: int = 32, block_cols: int = 128, arch: int = 90,
                      num_warps: int = 4):
    """A candidate stream-v2 generator (lottalora_kernels/candidates.py) compiled for sm_<arch>."""
    sig = {"out_ptr": "*fp32", "std": "fp32"}
    sig.update({n: "i32" for n in ["n_rows", "n_cols", "stride_out", "seed_lo", "seed_hi", "stream_lo", "stream_hi"]})
    constexprs = {"VARIANT": CANDIDATES[variant], "N_ROUNDS": rounds, "BLOCK_ROWS": block_rows,
                  "BLOCK_COLS": block_cols}
    sig.update({name: "constexpr" for name in constexprs})
    return triton.compile(ASTSource(_candidate_gen_kernel, sig, constexprs=constexprs),
                          target=GPUTarget("cuda", arch, 32),
                          options={"enable_fp_fusion": False, "num_warps": num_warps})


@triton.jit
def _generation_probe_kernel(out_ptr, seed_lo, seed_hi, stream_lo, stream_hi, scale,
                             CANDIDATE: tl.constexpr, CODE: tl.constexpr, N_ROUNDS: tl.constexpr,
                             BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """A measuring instrument, not a library kernel: one tile generated and summed to a scalar,
    so the SASS count is generation plus about one add per value, with no per-value store
    (the fused matmul never stores W either)."""
    offs_row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    col_start = tl.program_id(1) * BLOCK_COLS
    if CODE < 0:  # baseline: a constant tile, to subtract the probe's own reduction
        tile = tl.zeros((BLOCK_ROWS, BLOCK_COLS), tl.float32) + scale
    elif CANDIDATE:
        tile = candidate_tile(seed_lo, seed_hi, stream_lo, stream_hi, offs_row, col_start, scale,
                              BLOCK_COLS, CODE, N_ROUNDS)
    else:
        tile = backbone_tile(seed_lo, seed_hi, stream_lo, stream_hi, offs_row, col_start, scale, BLOCK_COLS, CODE)
    tl.store(out_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.sum(tl.sum(tile, 1), 0))


def compile_probe(candidate: bool, code: int, rounds: int = 10, block_rows: int = 32, block_cols: int = 128,
                  arch: int = 90, num_warps: int = 4):
    sig = {"out_ptr": "*fp32", "scale": "fp32", **{n: "i32" for n in ["seed_lo", "seed_hi", "stream_lo", "stream_hi"]}}
    constexprs = {"CANDIDATE": candidate, "CODE": code, "N_ROUNDS": rounds, "BLOCK_ROWS": block_rows,
                  "BLOCK_COLS": block_cols}
    sig.update({name: "constexpr" for name in constexprs})
    return triton.compile(ASTSource(_generation_probe_kernel, sig, constexprs=constexprs),
                          target=GPUTarget("cuda", arch, 32),
                          options={"enable_fp_fusion": False, "num_warps": num_warps})


def inspect(kernel) -> dict:
    """Registers, stack (spills), PTX fma count and the SASS instruction mix of a compiled kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([str(_bin_dir() / "cuobjdump"), "-res-usage", str(cubin)],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([str(_bin_dir() / "nvdisasm"), str(cubin)],
                              capture_output=True, text=True, check=True).stdout
    ptx = kernel.asm["ptx"]
    opcodes = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass)
    field = lambda name: int(re.search(rf"{name}:(\d+)", usage).group(1))  # noqa: E731
    return {
        "registers": field("REG"), "stack_bytes": field("STACK"),
        "ptx_fma": len(re.findall(r"^\s+fma\.", ptx, re.M)),
        "uses_wgmma": "wgmma" in ptx,
        "sass_total": len(opcodes), "sass_mix": dict(Counter(opcodes).most_common(12)),
        "spill_stores": opcodes.count("STL"), "spill_loads": opcodes.count("LDL"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="SM version, e.g. 90 for H100/H200")
    parser.add_argument("--quick", action="store_true", help="one config and dtype (smoke run)")
    args = parser.parse_args(argv)

    rows = []
    values_per_thread = 32 * 128 / (4 * 32)  # a 32 x 128 tile over 4 warps
    for init in spec.INITS:
        k = inspect(compile_generator(init, block_rows=32, block_cols=128, arch=args.arch))
        rows.append({"kernel": "stream v1 generator 32x128", "init": init, **k,
                     "sass_per_value": round(k["sass_total"] / values_per_thread, 1)})
    for variant in CANDIDATES:
        for rounds in (10, 7):
            k = inspect(compile_candidate(variant, rounds, arch=args.arch))
            rows.append({"kernel": f"candidate {variant}, Philox-{rounds}, 32x128", "init": variant, **k,
                         "sass_per_value": round(k["sass_total"] / values_per_thread, 1)})
    # Generation alone (tile summed, no per-value store): what the fused matmul pays per value.
    probes = [(f"probe: stream v1 {init}", False, spec.INIT_CODES[init], 10) for init in spec.INITS]
    probes += [(f"probe: candidate {v}, Philox-{r}", True, c, r) for v, c in CANDIDATES.items() for r in (10, 7)]
    baseline = inspect(compile_probe(False, -1, arch=args.arch))["sass_total"]
    for label, candidate, code, rounds in probes:
        k = inspect(compile_probe(candidate, code, rounds, arch=args.arch))
        rows.append({"kernel": label + f", 32x128 (minus {baseline} for the probe's own sum)",
                     "init": label.split()[-1], **k,
                     "sass_per_value": round((k["sass_total"] - baseline) / values_per_thread, 1)})
    configs = AUTOTUNE_CONFIGS[:1] if args.quick else AUTOTUNE_CONFIGS
    for cfg in configs:
        for forward in (True, False):
            k = inspect(compile_seeded_matmul(forward, "bf16", cfg.kwargs, arch=args.arch,
                                              num_warps=cfg.num_warps, num_stages=cfg.num_stages))
            blocks = "x".join(str(cfg.kwargs[b]) for b in ("BLOCK_M", "BLOCK_P", "BLOCK_Q"))
            rows.append({"kernel": f"seeded_matmul {'fwd' if forward else 'dx+dbeta'} {blocks} w{cfg.num_warps}",
                         "init": "gaussian", **k})
    header = "| kernel | init | regs | stack B | spill st/ld | PTX fma | SASS instr | SASS/value |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['init']} | {r['registers']} | {r['stack_bytes']} | "
                     f"{r['spill_stores']}/{r['spill_loads']} | {r['ptx_fma']} | {r['sass_total']} | "
                     f"{r.get('sass_per_value', '-')} |")
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        write_results(f"kernel_report_sm{args.arch}", rows, table,
                      device=f"none (compiled for sm_{args.arch} with Triton's bundled ptxas)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def compile_checks() -> list[dict]:
    """Every init of the generator and each direction x dtype of the fused kernel (one config),
    compiled for sm_90 and inspected; used by tests/test_sm90_compile.py. Must run in a process
    without TRITON_INTERPRET (interpreted kernels cannot be compiled)."""
    results = [{"kernel": "gen", "init": init, **inspect(compile_generator(init))} for init in spec.INITS]
    cfg = AUTOTUNE_CONFIGS[2]
    for dtype in ("bf16", "fp16", "fp32"):
        for forward in (True, False):
            k = compile_seeded_matmul(forward, dtype, cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            results.append({"kernel": "fwd" if forward else "dx", "dtype": dtype, **inspect(k)})
    return results
