"""Every shipped kernel compiles for Hopper (sm_90) here, with no GPU, within its budget.

Catches what the interpreter cannot: lowering failures of Gluon layouts, tl.dot shapes or casts
on a real target, register spills, a v2 decode main loop over its instruction budget, and a
multiply-add contracted into an FMA (which would change stream v1's bits; see stream_v1.py).
Kernels are compiled with the specialisations a launch gets (lottalora_kernels.tools.sass), with
the ptxas bundled with Triton, in a subprocess without TRITON_INTERPRET.
"""

import json

import pytest

from tests.support.processes import run_uninterpreted, skip_without_ptxas

skip_without_ptxas()


@pytest.fixture(scope="module")
def reports():
    code = "import json; from lottalora_kernels.tools.sass import compile_checks; print(json.dumps(compile_checks()))"
    out = run_uninterpreted("-c", code)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_v2_decode_kernels_meet_their_instruction_budget_without_spills(reports):
    """The issue-9 gate: stream v2's binary decode main loops (forward and input gradient) at
    <= 4 SASS per weight in every shipped config (built to reach ~2), and no spills."""
    from lottalora_kernels.tools.sass import DECODE_BUDGET_SASS_PER_VALUE

    decode = [r for r in reports if r["kernel"] == "decode"]
    assert {(r["direction"], r["dtype"], r["m_pad"]) for r in decode} == \
        {(direction, d, m) for direction in ("fwd", "dx") for d in ("bf16", "fp16") for m in (8, 16, 32)}
    values_per_thread = 64 * 128 / 32  # one warp's call span over its 32 threads (either direction)
    for r in decode:
        assert r["uses_mma"] and r["spill_stores"] == 0, r
        assert r["main_loop_sass"] / values_per_thread <= DECODE_BUDGET_SASS_PER_VALUE, r


def test_one_pass_kernels_meet_their_instruction_budget_without_spills(reports):
    """Issue 19's gate: the one-pass Gluon kernel (wgmma on sm_90, mma.sync on sm_80) in the
    checked launches: main loop within budget per generated weight, no spills, and the tensor
    cores the arch has."""
    from lottalora_kernels.tools.sass import ONE_PASS_BUDGET_SASS_PER_VALUE, ONE_PASS_CHECKS, one_pass_values_per_thread

    one_pass = [r for r in reports if r["kernel"] == "one_pass"]
    assert [r["case"] for r in one_pass] == ONE_PASS_CHECKS
    for r in one_pass:
        arch = r["case"]["arch"]
        assert r["spill_stores"] == 0 and r["stack_bytes"] == 0, r
        assert r["uses_wgmma"] if arch == 90 else (r["uses_mma"] and not r["uses_wgmma"]), r
        per_value = r["main_loop_sass"] / one_pass_values_per_thread(r["case"]["direction"])
        assert per_value <= ONE_PASS_BUDGET_SASS_PER_VALUE[arch], (per_value, r)


def test_one_pass_twins_compile_for_sm90_with_tensor_cores(reports):
    """The plain-Triton twins are the fallback on a GPU whose Triton cannot compile the Gluon
    kernel (gluon.run_fast_path): they must compile (the interpreter does not check the types
    a compiled loop carries). They are slow (per-element generation) and may spill."""
    from lottalora_kernels.tools.sass import ONE_PASS_TWIN_CHECKS

    twins = [r for r in reports if r["kernel"] == "one_pass_twin"]
    assert [r["case"] for r in twins] == ONE_PASS_TWIN_CHECKS
    assert all(r["uses_wgmma"] and r["main_loop_sass"] for r in twins), twins


def test_generators_compile_for_sm90_without_fma_or_spills(reports):
    gens = [r for r in reports if r["kernel"] == "gen"]
    assert {r["init"] for r in gens} == {"gaussian", "uniform", "rademacher"}
    for r in gens:
        assert r["ptx_fma"] == 0, r  # v1's values are bit-exact only without FMA contraction
        assert r["spill_stores"] == 0, r
    gens_v2 = [r for r in reports if r["kernel"] == "gen_v2"]
    assert {r["dtype"] for r in gens_v2} == {"bf16", "fp16", "fp32"}
    assert all(r["spill_stores"] == 0 for r in gens_v2)


def test_one_pass_kernel_compiles_for_sm90_with_tensor_cores_without_fma_or_spills(reports):
    mats = [r for r in reports if r["kernel"] in ("fwd", "dx")]
    assert len(mats) == 2 * (3 + 4)  # three dtypes for the first config, bf16 for the other four
    for r in mats:
        if r["dtype"] == "fp32":
            # An IEEE float32 tl.dot has no tensor-core path: Triton lowers it to explicit FMAs,
            # which compute the matmul, not backbone values. GPUs send float32 layers to the
            # two-phase regime (lottalora_kernels.seeded_linear.dispatch); the kernel only has to compile.
            assert not r["uses_wgmma"], r
            continue
        assert r["spill_stores"] == 0, r
        assert r["ptx_fma"] == 0, r
        assert r["uses_wgmma"] or r["uses_mma"], r


def test_epilogue_compiles_for_sm90_without_spills(reports):
    """The epilogue loads a block of split partial sums at once (decode) or a 32 x 128 tile
    (two-phase): neither may spill."""
    from lottalora_kernels.tools.sass import EPILOGUE_CASES

    epilogues = [r for r in reports if r["kernel"] == "epilogue"]
    assert {r["case"] for r in epilogues} == set(EPILOGUE_CASES)
    assert all(r["spill_stores"] == 0 and r["stack_bytes"] == 0 for r in epilogues), epilogues


SEED_WORDS = ("seed_lo", "seed_hi", "stream_lo", "stream_hi")


def test_kernels_never_specialise_on_seed_words():
    """Triton turns an int argument equal to 1 into a compile-time constant (seed=1 gives
    seed_lo = 1): every kernel that takes the seed words opts out, so no seed recompiles or
    changes the code. (Seen on an H100: the decode kernels failed to compile for such seeds.)"""
    code = f"""
import lottalora_kernels.backbone_gen as gen
from lottalora_kernels.seeded_linear import decode as dec, epilogue as epi, one_pass_v1 as mat, two_phase as two
from lottalora_kernels.seeded_linear import one_pass as op, one_pass_gluon as opg
kernels = [getattr(m, n) for m in (gen, dec, mat, epi, two, op, opg) for n in dir(m) if n.endswith("_kernel")]
kernels = [k for k in kernels if k is not None and set({SEED_WORDS!r}) <= set(getattr(k, "arg_names", ()))]
assert len(kernels) >= 9, len(kernels)
for k in kernels:
    skipped = {{k.arg_names[i] if isinstance(i, int) else i for i in k.do_not_specialize}}
    assert set({SEED_WORDS!r}) <= skipped, (k.fn.__name__, skipped)
print("ok")
"""
    assert run_uninterpreted("-c", code).stdout.strip().endswith("ok")  # jit objects, not interpreted


def test_stream_helpers_compile_with_constant_seed_words():
    """The stream functions also accept seed words that arrive as constants (a kernel compiled
    with them specialised), so a kernel that forgets to opt out still compiles and is right."""
    code = f"""
import lottalora_kernels.tools.sass as kr
plain = kr.specialise
kr.specialise = lambda sig, divisible, unit, constexprs: plain(sig, divisible, [*unit, *{SEED_WORDS!r}], constexprs)
for direction in ("fwd", "dx"):
    kr.compile_decode_v2("bf16", 4, 8, direction=direction)
kr.compile_generator_v2("bf16")
kr.compile_generator_v1("gaussian")
print("ok")
"""
    assert run_uninterpreted("-c", code).stdout.strip().endswith("ok")  # jit objects, not interpreted
