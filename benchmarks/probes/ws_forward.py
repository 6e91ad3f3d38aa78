"""Candidate B of the one-pass forward, as a count-only probe: compiled for sm_90 and counted, never launched.

Not a library kernel: nothing calls it, it has no twin, no epilogue (no LoRA, bias or beta: the
plain product y = x @ W_signs^T is written out in bf16 so that the compiler keeps the loop) and
no GPU has run it. benchmarks/NOTES.md ("Candidate B, counted") holds the prediction made
before it was built, its counts and the H200 prediction drawn from them.

Design (the large-M forward, M >= 1024). A program computes 256 rows of x against 128 rows of W;
the float32 accumulator (256 x 128) lives in the default partition, two consumer warpgroups
(8 warps, 128 registers a thread). Two worker partitions feed it through shared memory:

- the generator (2 warps) makes W once per span of 128 columns of i, with the library's own
  stream v2 helpers (``v2_call_at``, ``v2_pick_word``, ``v2_sign_pairs_pq``: the same bits as
  ``lottalora_kernels.stream.v2`` defines for W[o, i]). A thread owns one (o-span, a, column
  pair) of the span: the pair's two Philox calls (columns c and c + 1 of every block of 8) give
  the two halves of each 32-bit register of signs, and all 128 bits of both calls are used (the
  compiler stores the registers 8 weights at a time, by stmatrix). 64 threads
  cover a span's 128 x 128 weights, which is why the generator has two warps;
- the loader (1 warp) brings x by TMA.

The ring: 2 stages of a span each, W's tile (128 x 128 bf16, 128-byte swizzle, 32 KiB) and x's
(two boxes of 256 x 64, 64 KiB): 192 KiB, one program an SM. A stage's ready mbarrier takes two
arrivals (the generator's, and the loader's with x's bytes), its empty one the consumers'. The
consumers read the W tile in its two 64-column halves as wgmma's B operand (K-major: W^T) and
x's boxes as its A operand, both from shared memory, and free a stage once the next span's
wgmma are issued and the stage's have retired.

The tile's rows are W's rows permuted so that a warp's stores come from its own calls: tile row
T = 32 j + 16 p' + 8 O + a holds o = 64 O + 8 (2 j + p') + a (``tile_row_to_o``); the output's
columns are mapped back in the store. K must be a multiple of 128; M and N tails are masked
(TMA fills x's rows past M with zeros, the store drops W's rows past N).

    python -m benchmarks.probes.ws_forward [--json]    # in a process without TRITON_INTERPRET

prints registers (at launch and the setmaxnreg steps of the partitions), spills, shared memory,
and each partition's loop: its SASS a thread, and its thread-instructions (a warp's instruction
counts 32, as in the issue rate) per weight of W generated. Compiling needs Triton 3.9's Gluon
(warp_specialize, mbarriers, TMA) and its bundled ptxas; no GPU.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter

import triton.language as tl

from lottalora_kernels.gluon import gl, gluon_jit
from lottalora_kernels.stream.philox import PHILOX_ROUNDS
from lottalora_kernels.stream.v2 import v2_call_at, v2_pick_word, v2_sign_pairs_pq
from lottalora_kernels.tools.sass import disassemble, inspect, instructions, specialise

if gl is not None:
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

BLOCK_M = tl.constexpr(256)  # rows of x a program: W is generated once for all of them
BLOCK_N = tl.constexpr(128)  # rows of W a program (two o-spans of 64)
SPAN = tl.constexpr(128)  # columns of a v2 call span: the generator's step
BLOCK_K = tl.constexpr(64)  # columns of x a stage (and of a wgmma's K): half a span
STAGES = tl.constexpr(2)  # of a span each: W (32 KiB) and x (64 KiB)
CONSUMER_WARPS = tl.constexpr(8)
GENERATOR_WARPS = tl.constexpr(2)
LOADER_WARPS = tl.constexpr(1)
# Registers a thread under which 12 warps (8 + 2 + 1, rounded up to warpgroups) fit one SM's
# 64 K registers; warp_specialize assumes 256 unless told.
MAXNREG = 168
# The generator and the loader share a warpgroup (2 + 1 warps), so one register count: left to
# the compiler it is the minimum (24) and the generator spills; much more and values that live
# across the partitions' setmaxnreg spill. The consumers get the rest, (12 MAXNREG - 4
# WORKER_REGS) / 8 a thread.
WORKER_REGS = tl.constexpr(40)

# The generator's chunk of a span: 2 block rows p' x (16 o: O, a) x 16 blocks of 8 columns q x
# 4 column pairs x the pair. A thread holds one (O, a, pair): lanes cover a and the pair, the
# two warps O; registers cover p', q and the pair's two halves (adjacent: one 32-bit register).
_GEN_RANK = 5
GEN_LAYOUT = gl.BlockedLayout(size_per_thread=[2, 1, 16, 1, 2], threads_per_warp=[1, 8, 1, 4, 1],
                              warps_per_cta=[1, GENERATOR_WARPS.value, 1, 1, 1], order=[4, 3, 2, 1, 0]) if gl else None
CHUNK_ROWS = tl.constexpr(32)  # tile rows a chunk stores: 2 p' x 16
CHUNKS = tl.constexpr(BLOCK_N.value // CHUNK_ROWS.value)


def _axis_layout(parent, axis: int, rank: int):
    """The 1-D layout of ``parent``'s axis ``axis`` (the others sliced away, highest first)."""
    layout = parent
    for other in reversed(range(rank)):
        if other != axis:
            layout = gl.SliceLayout(other, layout)
    return layout


if gl is not None:
    _GEN_AXES = [gl.constexpr(_axis_layout(GEN_LAYOUT, d, _GEN_RANK)) for d in range(_GEN_RANK)]
    GEN_AX0, GEN_AX1, GEN_AX2, GEN_AX3, GEN_AX4 = _GEN_AXES
    GEN_LAYOUT = gl.constexpr(GEN_LAYOUT)


def tile_row_to_o(t):
    """The row of W (within the program's 128) that row t of the generated tile holds."""
    j, p_low, o_span, a = t // 32, (t // 16) % 2, (t // 8) % 2, t % 8
    return 64 * o_span + 8 * (2 * j + p_low) + a


@gluon_jit()
def _axis(N: gl.constexpr, AXIS: gl.constexpr, LAYOUT: gl.constexpr):
    """arange(N) along axis AXIS of the generator's 5-D layout (size 1 on the others)."""
    x = gl.arange(0, N, layout=LAYOUT)
    for ax in gl.static_range(5):
        if ax != AXIS:
            x = gl.expand_dims(x, ax)
    return x


@gluon_jit()
def _generator(w_smem, ready, empty, o_span0, n_spans, seed_lo, seed_hi, stream_lo, stream_hi,
               N_ROUNDS: gl.constexpr):
    oa = _axis(16, 1, GEN_AX1)  # 8 O + a
    pair = _axis(4, 3, GEN_AX3)
    span_o = o_span0 + oa // 8
    a = oa % 8
    p_low = _axis(2, 0, GEN_AX0)
    # q with the pair's two halves as a register axis: the asm takes elements 2k and 2k + 1 of a
    # thread, and they must be the two columns of one pair.
    q = _axis(16, 2, GEN_AX2) + _axis(2, 4, GEN_AX4) * 0
    for s in range(0, n_spans):
        slot = s % STAGES
        # The span's two calls, made before the wait: they overlap the consumers' use of the slot.
        wa0, wa1, wa2, wa3 = v2_call_at(seed_lo, seed_hi, stream_lo, stream_hi, span_o, a, s, 2 * pair, N_ROUNDS)
        wb0, wb1, wb2, wb3 = v2_call_at(seed_lo, seed_hi, stream_lo, stream_hi, span_o, a, s, 2 * pair + 1, N_ROUNDS)
        mbarrier.wait(empty.index(slot), ((s // STAGES) & 1) ^ 1)
        tile = w_smem.index(slot)
        for j in gl.static_range(CHUNKS):
            # Block rows p = 2 j + p' all sit in word j of their call (bit 16 p + q): no select.
            p = 2 * j + p_low
            word_a, _ = v2_pick_word(wa0, wa1, wa2, wa3, j, p, q)
            word_b, _ = v2_pick_word(wb0, wb1, wb2, wb3, j, p, q)
            w = v2_sign_pairs_pq(word_a, word_b, p, q, tl.bfloat16)
            tile.slice(CHUNK_ROWS * j, CHUNK_ROWS, dim=0).store(gl.reshape(w, [CHUNK_ROWS, SPAN]))
        fence_async_shared()  # the generic stores before the wgmma's async reads
        mbarrier.arrive(ready.index(slot), count=1)


@gluon_jit()
def _loader(x_desc, x_smem, ready, empty, m0, n_spans):
    for s in range(0, n_spans):
        slot = s % STAGES
        mbarrier.wait(empty.index(slot), ((s // STAGES) & 1) ^ 1)
        # One arrival of the stage's two, and the bytes of x's two boxes (a box is 64 columns:
        # the 128-byte swizzle's width).
        mbarrier.expect(ready.index(slot), 2 * x_desc.block_type.nbytes)
        for h in gl.static_range(2):
            tma.async_load(x_desc, [m0, s * SPAN + h * BLOCK_K], ready.index(slot), x_smem.index(2 * slot + h))


@gluon_jit()
def _consumer(x_smem, w_smem, ready, empty, n_spans, ACC_LAYOUT: gl.constexpr):
    acc = gl.zeros((BLOCK_M, BLOCK_N), gl.float32, layout=ACC_LAYOUT)
    for s in range(0, n_spans):
        slot = s % STAGES
        mbarrier.wait(ready.index(slot), (s // STAGES) & 1)
        w_tile = w_smem.index(slot)
        for h in gl.static_range(2):
            acc = warpgroup_mma(x_smem.index(2 * slot + h), w_tile.slice(h * BLOCK_K, BLOCK_K, dim=1).permute((1, 0)),
                                acc, is_async=True)
        # The previous span's two wgmma have retired: its stage (x and W) can be refilled.
        acc = warpgroup_mma_wait(num_outstanding=2, deps=[acc])
        mbarrier.arrive(empty.index((s + STAGES - 1) % STAGES), count=1, pred=s > 0)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
    return acc


@gluon_jit(do_not_specialize=["seed_lo", "seed_hi", "stream_lo", "stream_hi"])
def ws_forward_kernel(x_desc, out_ptr, M, N, K, stride_om, seed_lo, seed_hi, stream_lo, stream_hi,
                      N_ROUNDS: gl.constexpr = PHILOX_ROUNDS):
    """out[m, o] = sum_i x[m, i] W_signs[o, i] in bf16 (the signs, no std, no epilogue)."""
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[CONSUMER_WARPS, 1],
                                                         instr_shape=[16, BLOCK_N, 16])
    w_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, SPAN], gl.bfloat16)
    pid_n = gl.program_id(0)  # W's rows fastest: the programs that share x's tile run together
    pid_m = gl.program_id(1)
    n_spans = K // SPAN

    x_smem = gl.allocate_shared_memory(gl.bfloat16, [2 * STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    w_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_N, SPAN], w_layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=2)  # the generator's arrival and the loader's
        mbarrier.init(empty.index(i), count=1)

    acc = gl.warp_specialize([
        (_consumer, (x_smem, w_smem, ready, empty, n_spans, acc_layout)),
        (_generator, (w_smem, ready, empty, pid_n * (BLOCK_N // 64), n_spans, seed_lo, seed_hi, stream_lo,
                      stream_hi, N_ROUNDS)),
        (_loader, (x_desc, x_smem, ready, empty, pid_m * BLOCK_M, n_spans)),
    ], [GENERATOR_WARPS, LOADER_WARPS], [WORKER_REGS, WORKER_REGS])

    rows = pid_m * BLOCK_M + gl.expand_dims(gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, acc_layout)), 1)
    t = gl.expand_dims(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, acc_layout)), 0)
    cols = pid_n * BLOCK_N + 64 * ((t // 8) % 2) + 8 * (t // 16) + t % 8  # tile_row_to_o
    gl.store(out_ptr + rows.to(gl.int64) * stride_om + cols, acc.to(gl.bfloat16), mask=(rows < M) & (cols < N))


def compile_probe(arch: int = 90, rounds: int = PHILOX_ROUNDS):
    """ws_forward_kernel compiled for ``arch`` as a contiguous launch would specialise it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    x_layout = gl.NVMMASharedLayout.get_default_for([BLOCK_M.value, BLOCK_K.value], gl.bfloat16)
    sig = {"x_desc": f"tensordesc<bf16[{BLOCK_M.value},{BLOCK_K.value}],{x_layout!r}>", "out_ptr": "*bf16"}
    sig.update({n: "i32" for n in ["M", "N", "K", "stride_om", "seed_lo", "seed_hi", "stream_lo", "stream_hi"]})
    constexprs = {"N_ROUNDS": rounds}
    sig.update({name: "constexpr" for name in constexprs})
    attrs = specialise(sig, ["out_ptr", "N", "K", "stride_om"], [], constexprs)
    return triton.compile(GluonASTSource(ws_forward_kernel, sig, constexprs=constexprs, attrs=attrs),
                          target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": CONSUMER_WARPS.value, "maxnreg": MAXNREG})


# What marks each partition's loop in the SASS (the consumers' wgmma, the generator's Philox
# IMAD.HI, the loader's TMA), its warps, and the spans of 128 columns one trip of it covers.
PARTITIONS = (
    ("consumers", "HGMMA", CONSUMER_WARPS.value, 1),
    ("generator", "IMAD", GENERATOR_WARPS.value, 1),
    ("loader", "UTMALDG", LOADER_WARPS.value, 1),
)
WEIGHTS_PER_SPAN = BLOCK_N.value * SPAN.value


def _highest_register(line: str) -> int:
    """The highest register an instruction names, counting the ranges behind a first register:
    a wgmma's accumulator (N / 2 float32 registers for m64nNk16), a matrix store's four, a wide
    access's two or four."""
    text = line.split("*/", 1)[1]
    found = [int(r) for r in re.findall(r"\bR(\d+)\b", text)]
    if not found:
        return -1
    width = 1
    if m := re.search(r"HGMMA\.64x(\d+)x\d+\.F32", text):
        width = int(m.group(1)) // 2
    elif m := re.search(r"[SL]DSM\.\S*\.(\d)\b", text):
        width = int(m.group(1))
    elif m := re.search(r"\.(64|128)\b", text):
        width = int(m.group(1)) // 32
    return max(found) + width - 1


def partition_loops(sass: str) -> dict:
    """Each partition's loop: the body of a conditional backward branch (the partitions' slow
    paths of mbarrier waits jump back unconditionally, and a sass.main_loop-style search would
    take them for loops spanning the kernel), the largest holding the partition's mark."""
    found, labels = instructions(sass)
    loops = []
    for address, opcode, operands, line in found:
        predicated = line.split("*/", 1)[1].lstrip().startswith("@")
        target = re.search(r"(\.L_x_\d+)", operands) if opcode == "BRA" and predicated else None
        if target and labels.get(target.group(1), address + 1) <= address:
            body = [i for i in found if labels[target.group(1)] <= i[0] <= address and i[1] != "NOP"]
            if len(body) > 2:
                loops.append(body)
    found = {}
    for name, mark, _, _ in PARTITIONS:
        with_mark = [body for body in loops if any(op == mark and (mark != "IMAD" or ".HI" in line)
                                                  for _, op, _, line in body)]
        if with_mark:
            body = max(with_mark, key=len)
            registers = [_highest_register(line) for *_, line in body]
            found[name] = {"sass": len(body), "mix": dict(Counter(op for _, op, _, _ in body).most_common(8)),
                           "registers_used": max(registers, default=-1) + 1,
                           "spills": sum(op in ("STL", "LDL") for _, op, _, _ in body)}
    return found


def register_budgets(sass: str) -> list[str]:
    """The setmaxnreg steps of the kernel, in order: a partition taking (TRY_ALLOC) or giving
    back (DEALLOC) registers; the workers idle at the lowest count until their partition runs."""
    steps = re.findall(r"USETMAXREG\.(TRY_ALLOC|DEALLOC)\S*\s+(?:\w+,\s*)?0x([0-9a-f]+)", sass)
    return list(dict.fromkeys(f"{kind.lower()} {int(value, 16)}" for kind, value in steps))


def count(kernel) -> dict:
    """Registers, spills, shared memory and each partition's loop, per generated weight."""
    info = inspect(kernel)
    sass = disassemble(kernel)
    loops = partition_loops(sass)
    for name, _, warps, spans in PARTITIONS:
        if name in loops:
            loops[name]["per_span"] = loops[name]["sass"] / spans
            loops[name]["per_weight"] = loops[name]["sass"] * 32 * warps / (spans * WEIGHTS_PER_SPAN)
    return {"registers": info["registers"], "stack_bytes": info["stack_bytes"],
            "spill_stores": info["spill_stores"], "spill_loads": info["spill_loads"],
            "shared_bytes": kernel.metadata.shared, "setmaxnreg": register_budgets(sass),
            "sass_total": info["sass_total"], "partitions": loops}


def report(counts: dict) -> str:
    lines = [f"candidate B probe (sm_90, bf16, stream v2): {CONSUMER_WARPS.value} consumer + {GENERATOR_WARPS.value} "
             f"generator + {LOADER_WARPS.value} loader warps; a program {BLOCK_M.value} rows of x x {BLOCK_N.value} "
             f"rows of W, spans of {SPAN.value} columns",
             f"registers at launch {counts['registers']} a thread, setmaxnreg steps {', '.join(counts['setmaxnreg'])}; "
             f"spills: {counts['spill_stores']} stores, {counts['spill_loads']} loads, "
             f"stack {counts['stack_bytes']} B; "
             f"shared memory {counts['shared_bytes']} B ({counts['shared_bytes'] / 1024:.1f} KiB) a program",
             "partition: loop SASS a thread | thread-instructions per generated weight | registers the "
             "loop touches | spills in the loop | mix"]
    total = 0.0
    for name, _, _, spans in PARTITIONS:
        loop = counts["partitions"].get(name)
        if loop is None:
            lines.append(f"{name}: no loop found")
            continue
        total += loop["per_weight"]
        lines.append(f"{name}: {loop['sass']} a trip of {spans} span(s) | {loop['per_weight']:.3f} per weight | "
                     f"{loop['registers_used']} | {loop['spills']} | {loop['mix']}")
    lines.append(f"all partitions: {total:.3f} thread-instructions per generated weight "
                 f"(each weight serves {BLOCK_M.value} rows of x)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=PHILOX_ROUNDS.value, help="Philox rounds (10: the stream)")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON instead of the report")
    args = parser.parse_args(argv)
    if gl is None:
        raise SystemExit("this Triton has no Gluon")
    counts = count(compile_probe(rounds=args.rounds))
    print(json.dumps(counts) if args.json else report(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
