"""Compile the shipped kernels for a GPU target without a GPU, and count what the hardware would run.

Triton lowers to PTX and, with the ptxas it bundles, to a cubin for any NVIDIA target on a
machine with no GPU. Each kernel is compiled with the specialisations a real launch gets
(16-divisible pointers, sizes and leading strides; unit strides as the constant 1), and
``inspect`` reads off registers, spills and the SASS of its main loop (the body of the loop
that generates the backbone). ``compile_checks`` is what CI holds to the budgets
(tests/kernels/test_sm90_compile.py); ``benchmarks.kernel_report`` turns the counts into
predictions. Needs a process without TRITON_INTERPRET.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .. import backbone_gen
from ..runtime import next_power_of_2
from ..seeded_linear import decode, epilogue, one_pass, one_pass_gluon, one_pass_v1
from ..stream import spec

# The CI gate: stream v2's decode main loops, in SASS per generated weight (built to reach ~2).
DECODE_BUDGET_SASS_PER_VALUE = 4.0

_TL = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16}


def _bin_dir() -> Path:
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def _target(arch: int) -> GPUTarget:
    return GPUTarget("cuda", arch, 32)


def specialise(sig: dict, divisible: list[str], unit: list[str], constexprs: dict) -> dict:
    """Mark ``divisible`` arguments 16-divisible and turn ``unit`` ones into the constant 1, as
    Triton does for the arguments of a contiguous launch. Returns ASTSource attrs."""
    for name in unit:
        sig[name] = "constexpr"
        constexprs[name] = 1
    index = {name: i for i, name in enumerate(sig)}
    return {(index[name],): [["tt.divisibility", 16]] for name in divisible}


def compile_one_pass_v1(forward: bool, dtype: str, config: dict, init: str = "gaussian", arch: int = 90,
                          num_warps: int = 4, num_stages: int = 3):
    """Stream v1's one-pass kernel (one_pass_v1): forward (x @ W^T) or input gradient (+ dbeta), one config."""
    sig = {name: f"*{dtype}" for name in ["a_ptr", "lo_ptr", "lmat_ptr", "bias_ptr"]}
    sig.update(beta_ptr="*fp32", out_ptr=f"*{dtype}", x_ptr=f"*{dtype}", dbeta_ptr="*fp32")
    sig.update({n: "i32" for n in ["M", "P", "Q", "R", "stride_am", "stride_aq", "stride_lom", "stride_lor",
                                   "stride_lmr", "stride_lmp", "stride_om", "stride_op", "stride_xm", "stride_xp",
                                   "seed_lo", "seed_hi", "stream_lo", "stream_hi"]})
    sig.update(value_scale="fp32", lora_scale="fp32", M_BUCKET="i32")
    constexprs = dict(W_TRANSPOSED=forward, INIT=spec.INIT_CODES[init], HAS_LORA=True, HAS_BIAS=forward,
                      WRITE_OUT=True, DBETA=not forward, DOT_DTYPE=_TL[dtype], INPUT_PRECISION="ieee",
                      BLOCK_R=16, **config)
    sig.update({name: "constexpr" for name in constexprs})
    attrs = specialise(sig, ["a_ptr", "lo_ptr", "lmat_ptr", "bias_ptr", "out_ptr", "x_ptr", "P", "Q", "stride_am",
                              "stride_om", "stride_xm", "stride_lmp" if not forward else "stride_lmr"],
                        ["stride_aq", "stride_lor", "stride_op", "stride_xp",
                         "stride_lmr" if not forward else "stride_lmp"], constexprs)
    return triton.compile(ASTSource(one_pass_v1._one_pass_v1_kernel, sig, constexprs=constexprs, attrs=attrs),
                          target=_target(arch),
                          options={"enable_fp_fusion": False, "num_warps": num_warps, "num_stages": num_stages})


def compile_decode_v2(dtype: str = "bf16", num_warps: int = 4, m_pad: int = 8, rounds: int = spec.PHILOX_ROUNDS,
                      arch: int = 90, direction: str = "fwd"):
    """Stream v2's Gluon decode kernel (seeded_linear.decode), forward ("fwd", x @ W^T) or input
    gradient ("dx", dy @ W), as launched for a contiguous x or dy."""
    from triton.experimental.gluon._runtime import GluonASTSource

    if direction == "fwd":  # with lora_A: the launch that also makes x @ A^T (a rank of 16 here)
        sig = {"x_ptr": f"*{dtype}", "partial_ptr": "*fp32", "xl_ptr": f"*{dtype}", "a_ptr": f"*{dtype}",
               "xa_partial_ptr": "*fp32"}
        ints = ["M", "N", "K", "R", "stride_xm", "stride_xk", "stride_xlm", "stride_xlk", "stride_ar", "stride_ak"]
        divisible = ["x_ptr", "partial_ptr", "xl_ptr", "a_ptr", "xa_partial_ptr", "N", "K", "R", "stride_xm",
                     "stride_xlm", "stride_ar"]
        unit = ["stride_xk", "stride_xlk", "stride_ak"]
        tail = ["n_w_blocks"]
    else:
        sig = {"dy_ptr": f"*{dtype}", "partial_ptr": "*fp32"}
        ints = ["M", "N", "K", "stride_dym", "stride_dyn"]
        divisible, unit, tail = ["dy_ptr", "partial_ptr", "N", "K", "stride_dym"], ["stride_dyn"], []
    sig.update({n: "i32" for n in [*ints, "seed_lo", "seed_hi", "stream_lo", "stream_hi", "spans_per_split", *tail]})
    constexprs = dict(NUM_WARPS=num_warps, M_PAD=m_pad, DTYPE=_TL[dtype], N_ROUNDS=rounds)
    sig.update({name: "constexpr" for name in constexprs})
    attrs = specialise(sig, divisible, unit, constexprs)
    kernel = decode._seeded_decode_fwd_kernel if direction == "fwd" else decode._seeded_decode_dx_kernel
    return triton.compile(GluonASTSource(kernel, sig, constexprs=constexprs, attrs=attrs),
                          target=_target(arch), options={"num_warps": num_warps})


ONE_PASS_POINTERS = ("a_ptr", "al_ptr", "lf_ptr", "lo_ptr", "lmat_ptr", "bias_ptr", "beta_ptr", "out_ptr",
                     "lo_out_ptr", "x_ptr", "dbeta_ptr", "part_ptr", "lo_part_ptr", "count_ptr")
ONE_PASS_INTS = ("M", "P", "Q", "R", "p0", "q0", "stride_am", "stride_aq", "stride_alm", "stride_alq", "stride_lfr",
                 "stride_lfq", "stride_lom", "stride_lor", "stride_lmp", "stride_lmr", "stride_om", "stride_op",
                 "stride_xm", "stride_xp", "seed_lo", "seed_hi", "stream_lo", "stream_hi", "spans_per_split")


# The CI gate for the one-pass kernels: main-loop SASS per generated weight (built to reach ~2;
# counted 2.1 forward without LoRA, 2.55 with xa made in the loop, 2.9 input gradient, sm_90).
ONE_PASS_BUDGET_SASS_PER_VALUE = {90: 3.2, 80: 4.0}  # sm_80: mma.sync's HMMAs are in the loop
# Shipped launches CI compiles (a few seconds each): every direction, BLOCK_M, LoRA shape, split-K
# and x staging path at least once; benchmarks.kernel_report counts the whole grid.
ONE_PASS_CHECKS = [
    dict(direction="fwd", dtype="bf16", block_m=64, rank=16, split=True, separate_lx=True, arch=90),
    dict(direction="fwd", dtype="fp16", block_m=32, rank=32, arch=90),
    dict(direction="fwd", dtype="bf16", block_m=16, rank=0, split=True, x_async=False, arch=90),
    dict(direction="dx", dtype="bf16", block_m=32, rank=16, split=True, arch=90),
    dict(direction="dx", dtype="bf16", block_m=64, rank=16, arch=90),
    dict(direction="dx", dtype="bf16", block_m=16, rank=32, x_async=False, arch=90),
    dict(direction="fwd", dtype="bf16", block_m=64, rank=16, arch=80),
    dict(direction="dx", dtype="fp16", block_m=32, rank=16, split=True, arch=80),
]

ONE_PASS_TWIN_CHECKS = [dict(direction="fwd", block_m=64, rank=16, split=True),
                        dict(direction="dx", block_m=32, rank=16, split=True)]


def one_pass_values_per_thread(direction: str) -> float:
    """Weights one thread generates per main-loop iteration (a reduction span): 256 output rows
    x 128 columns (forward) or x 64 rows of o (input gradient), over 128 threads."""
    return 256 * (128 if direction == "fwd" else 64) / 128


def compile_one_pass(direction: str = "fwd", dtype: str = "bf16", block_m: int = 64, rank: int = 16,
                     split: bool = False, arch: int = 90, twin: bool = False, rounds: int = spec.PHILOX_ROUNDS,
                     bias: bool = True, separate_lx: bool = False, chunks: int = one_pass_gluon.CHUNKS,
                     write_out: bool = True, dbeta: bool | None = None, x_async: bool = True):
    """Stream v2's one-pass kernel (seeded_linear.one_pass_gluon; ``twin``: its plain-Triton twin),
    forward ("fwd": y with xa made inside, bias) or input gradient ("dx": dx with dy_b's LoRA
    term and dbeta), as launched for contiguous tensors of a whole layer (16-divisible sizes).
    ``arch`` 90 compiles the wgmma body, 80 / 89 the mma.sync one."""
    dx = direction == "dx"
    fp = {"beta_ptr", "dbeta_ptr", "part_ptr", "lo_part_ptr"}
    sig = {name: ("*fp32" if name in fp else "*i32" if name == "count_ptr" else f"*{dtype}")
           for name in ONE_PASS_POINTERS}
    sig.update({name: "i32" for name in ONE_PASS_INTS})
    sig.update(value_scale="fp32", lora_scale="fp32")
    r_pad = max(16, next_power_of_2(max(rank, 1)))
    constexprs = dict(DX=dx, NUM_WARPS=4, BLOCK_M=block_m, R_PAD=r_pad, MAKE_LO=not dx and rank > 0,
                      HAS_LO=rank > 0, LORA_TERM=rank > 0, HAS_BIAS=bias and not dx, WRITE_OUT=write_out,
                      DBETA=dx if dbeta is None else dbeta,
                      SPLIT=split)
    if twin:
        constexprs.update(DOT_DTYPE=_TL[dtype], INPUT_PRECISION="ieee")
    else:
        constexprs.update(DTYPE=_TL[dtype], HOPPER=arch == 90, SEPARATE_LX=separate_lx and not dx, X_ASYNC=x_async,
                          CHUNKS=chunks, N_ROUNDS=rounds)
    sig.update({name: "constexpr" for name in constexprs})
    pointers = [n for n in ONE_PASS_POINTERS if n not in ("beta_ptr", "dbeta_ptr")]
    divisible = [*pointers, "P", "Q", "p0", "q0", "stride_am", "stride_alm", "stride_lfr", "stride_om", "stride_xm",
                 "stride_lmp" if not dx else "stride_lmr"]
    unit = ["stride_aq", "stride_alq", "stride_lfq", "stride_op", "stride_xp", "stride_lor",
            "stride_lmr" if not dx else "stride_lmp"]
    attrs = specialise(sig, divisible, unit, constexprs)
    if twin:
        return triton.compile(ASTSource(one_pass._one_pass_twin_kernel, sig, constexprs=constexprs, attrs=attrs),
                              target=_target(arch), options={"num_warps": 4})
    from triton.experimental.gluon._runtime import GluonASTSource

    return triton.compile(GluonASTSource(one_pass_gluon._one_pass_kernel, sig, constexprs=constexprs, attrs=attrs),
                          target=_target(arch), options={"num_warps": 4})


def compile_epilogue(dtype: str = "bf16", block_m: int = 4, block_n: int = 32, n_splits: int = 32,
                     lo_splits: int = 32, arch: int = 90, num_warps: int = 4, dbeta: bool = False):
    """The shared epilogue (seeded_linear.epilogue) as a decode forward launches it: split-K partial sums of
    the backbone product and of x @ A^T, LoRA, bias, x @ A^T written out (``dbeta``: the input
    gradient's launch instead, with dbeta partials and no x @ A^T out)."""
    sig = {"acc_ptr": "*fp32", "lo_ptr": "*fp32" if lo_splits > 1 else f"*{dtype}", "lmat_ptr": f"*{dtype}",
           "bias_ptr": f"*{dtype}", "beta_ptr": "*fp32", "out_ptr": f"*{dtype}", "x_ptr": f"*{dtype}",
           "dbeta_ptr": "*fp32", "lo_out_ptr": f"*{dtype}"}
    sig.update({n: "i32" for n in ["M", "N", "R", "n_splits", "lo_splits", "stride_as", "stride_am", "stride_an",
                                   "stride_los", "stride_lom", "stride_lor", "stride_lmn", "stride_lmr",
                                   "stride_om", "stride_on", "stride_xm", "stride_xn"]})
    sig.update(value_scale="fp32", lora_scale="fp32")
    constexprs = dict(HAS_LORA=True, HAS_BIAS=not dbeta, WRITE_OUT=True, DBETA=dbeta, WRITE_LO=not dbeta,
                      BLOCK_M=block_m, BLOCK_N=block_n, SPLIT_BLOCK=epilogue.split_block(n_splits, block_m * block_n),
                      LO_SPLIT_BLOCK=next_power_of_2(lo_splits), R_UNROLL=epilogue.R_UNROLL)
    sig.update({name: "constexpr" for name in constexprs})
    attrs = specialise(sig, ["acc_ptr", "lo_ptr", "lmat_ptr", "out_ptr", "N", "stride_as", "stride_am", "stride_om",
                              "stride_los"], ["stride_an", "stride_lor", "stride_on", "stride_lmr"], constexprs)
    return triton.compile(ASTSource(epilogue._seeded_epilogue_kernel, sig, constexprs=constexprs, attrs=attrs),
                          target=_target(arch), options={"num_warps": num_warps})


# The epilogue's launches with the largest per-program loads: decode tiles (tile_shape narrows
# them as splits grow) and the two-phase 32 x 128 tile, forward and input gradient.
EPILOGUE_CASES = {
    "decode fwd, 32 splits": dict(block_m=4, block_n=32, n_splits=32, lo_splits=32),
    "decode fwd, 64 splits": dict(block_m=2, block_n=32, n_splits=64, lo_splits=64),
    "decode dx, 32 splits": dict(block_m=4, block_n=32, n_splits=32, lo_splits=1, dbeta=True),
    "two-phase fwd": dict(block_m=32, block_n=128, n_splits=1, lo_splits=1),
    "two-phase dx": dict(block_m=32, block_n=128, n_splits=1, lo_splits=1, dbeta=True),
}


def compile_generator_v2(dtype: str = "bf16", num_warps: int = 4, arch: int = 90):
    """Stream v2's Gluon generator (backbone_gen), writing signs into a row-major chunk."""
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = {"out_ptr": f"*{dtype}"}
    sig.update({n: "i32" for n in ["n_rows", "n_cols", "row_start", "col_start", "stride_out_r", "stride_out_c",
                                   "seed_lo", "seed_hi", "stream_lo", "stream_hi"]})
    sig["scale"] = "fp32"
    constexprs = dict(NUM_WARPS=num_warps, PAIR_DTYPE=tl.float16 if dtype == "fp16" else tl.bfloat16,
                      SCALED=dtype == "fp32")
    sig.update({name: "constexpr" for name in constexprs})
    attrs = specialise(sig, ["out_ptr", "n_cols", "row_start", "col_start", "stride_out_r"], ["stride_out_c"],
                        constexprs)
    return triton.compile(GluonASTSource(backbone_gen._backbone_gen_v2_kernel, sig, constexprs=constexprs, attrs=attrs),
                          target=_target(arch), options={"num_warps": num_warps})


def compile_generator_v1(init: str, block_rows: int = 32, block_cols: int = 64, dtype: str = "fp32",
                         arch: int = 90, num_warps: int = 4):
    """Stream v1's generator (backbone_gen), float32 values rounded to ``dtype``."""
    sig = {"out_ptr": f"*{dtype}"}
    sig.update({n: "i32" for n in ["n_rows", "n_cols", "row_start", "col_start", "stride_out_r", "stride_out_c",
                                   "seed_lo", "seed_hi", "stream_lo", "stream_hi"]})
    sig["scale"] = "fp32"
    constexprs = {"INIT": spec.INIT_CODES[init], "BLOCK_ROWS": block_rows, "BLOCK_COLS": block_cols}
    sig.update({name: "constexpr" for name in constexprs})
    attrs = specialise(sig, ["out_ptr", "n_cols", "stride_out_r"], ["stride_out_c"], constexprs)
    return triton.compile(ASTSource(backbone_gen._backbone_gen_kernel, sig, constexprs=constexprs, attrs=attrs),
                          target=_target(arch), options={"enable_fp_fusion": False, "num_warps": num_warps})


_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(?:\.[A-Z0-9_.]+)?([^;]*);")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")


_TENSOR_CORE_OPS = ("HMMA", "HGMMA")


def instructions(sass: str) -> tuple[list[tuple[int, str, str, str]], dict[str, int]]:
    """The instructions of nvdisasm's text, as (address, opcode, operands, line), and each label's
    address."""
    labels, pending, found = {}, [], []
    for line in sass.splitlines():
        label = _LABEL.match(line)
        if label:
            pending.append(label.group(1))
            continue
        m = _INSTRUCTION.search(line)
        if m:
            address = int(m.group(1), 16)
            labels.update((name, address) for name in pending)
            pending = []
            found.append((address, m.group(2), m.group(3), line))
    return found, labels


def main_loop(sass: str) -> Counter | None:
    """Opcodes of the main loop (a backward branch's target up to the branch), NOPs excluded,
    or None for straight-line code (the one-instruction trap loop that ends every kernel does
    not count). The main loop is the largest loop with a tensor-core instruction, or the largest
    loop in a kernel without any: the decode kernel's side loop (x @ A^T, float32 FMAs in
    separate programs) can be longer than its backbone loop."""
    found, labels = instructions(sass)
    loops = []
    for address, opcode, operands, _ in found:
        target = re.search(r"(\.L_x_\d+)", operands) if opcode == "BRA" else None
        if target and labels.get(target.group(1), address + 1) <= address:
            body = Counter(op for a, op, _, _ in found if labels[target.group(1)] <= a <= address and op != "NOP")
            if sum(body.values()) > 2:
                loops.append(body)
    with_mma = [body for body in loops if any(body[op] for op in _TENSOR_CORE_OPS)]
    return max(with_mma or loops, key=lambda body: sum(body.values()), default=None)


def disassemble(kernel) -> str:
    """nvdisasm's text of a compiled kernel's cubin (the bundled nvdisasm)."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        return subprocess.run([str(_bin_dir() / "nvdisasm"), "-c", str(cubin)],
                              capture_output=True, text=True, check=True).stdout


def inspect(kernel) -> dict:
    """Registers, stack (spills), PTX fma count, SASS totals and the main loop of a compiled kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([str(_bin_dir() / "cuobjdump"), "-res-usage", str(cubin)],
                               capture_output=True, text=True, check=True).stdout
    sass = disassemble(kernel)
    ptx = kernel.asm["ptx"]
    opcodes = [m.group(2) for m in _INSTRUCTION.finditer(sass)]
    loop = main_loop(sass)
    field = lambda name: int(re.search(rf"{name}:(\d+)", usage).group(1))  # noqa: E731
    return {
        "registers": field("REG"), "stack_bytes": field("STACK"),
        "ptx_fma": len(re.findall(r"^\s+fma\.", ptx, re.M)),
        "uses_wgmma": "wgmma" in ptx, "uses_mma": "mma.sync" in ptx,
        "sass_total": len(opcodes), "sass_mix": dict(Counter(opcodes).most_common(12)),
        "spill_stores": opcodes.count("STL"), "spill_loads": opcodes.count("LDL"),
        "main_loop_sass": sum(loop.values()) if loop else None,
        "main_loop_mix": dict(loop.most_common(10)) if loop else None,
    }


def compile_checks() -> list[dict]:
    """The CI gate (tests/kernels/test_sm90_compile.py): every shipped stream-v2 decode config, the v2
    generator, stream v1's generator for each init, the epilogue's decode and two-phase launches,
    the one-pass kernel's ONE_PASS_CHECKS (sm_90 and sm_80) and stream v1's one-pass kernel in
    each dtype, compiled and inspected. Must run in a
    process without TRITON_INTERPRET."""
    results = [dict(kernel="decode", direction=direction, dtype=d, m_pad=m,
                    **inspect(compile_decode_v2(d, 4, m, direction=direction)))
               for direction in ("fwd", "dx") for d in ("bf16", "fp16") for m in (8, 16, 32)]
    results += [dict(kernel="gen_v2", dtype=d, **inspect(compile_generator_v2(d))) for d in ("bf16", "fp16", "fp32")]
    results += [dict(kernel="gen", init=init, **inspect(compile_generator_v1(init))) for init in spec.VERSION_INITS[1]]
    results += [dict(kernel="epilogue", case=name, **inspect(compile_epilogue(**case)))
                for name, case in EPILOGUE_CASES.items()]
    for case in ONE_PASS_CHECKS:
        results.append(dict(kernel="one_pass", case=case, **inspect(compile_one_pass(**case))))
    for case in ONE_PASS_TWIN_CHECKS:  # the fallback where a GPU's Triton cannot compile the Gluon kernel
        results.append(dict(kernel="one_pass_twin", case=case, **inspect(compile_one_pass(**case, twin=True))))
    for cfg in one_pass_v1.AUTOTUNE_CONFIGS:
        for dtype in (("bf16", "fp16", "fp32") if cfg is one_pass_v1.AUTOTUNE_CONFIGS[0] else ("bf16",)):
            for forward in (True, False):
                k = compile_one_pass_v1(forward, dtype, cfg.kwargs, num_warps=cfg.num_warps,
                                          num_stages=cfg.num_stages)
                results.append({"kernel": "fwd" if forward else "dx", "dtype": dtype,
                                "config": str(cfg.kwargs), **inspect(k)})
    return results
