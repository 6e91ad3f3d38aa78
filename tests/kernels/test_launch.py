"""lottalora_kernels.launch: a cached launch passes a compiled kernel exactly what Triton's own
launch path would, for every specialization, on a fake CUDA driver (no GPU needed).

The probe (tests/support/launch_probe.py) runs without TRITON_INTERPRET, compiles for sm_90 with the
ptxas bundled with Triton and records launches instead of running them (lottalora_kernels.tools.fake_cuda).
"""

import json

import pytest

from tests.support.processes import run_uninterpreted, skip_without_ptxas

skip_without_ptxas()


@pytest.fixture(scope="module")
def probe():
    return json.loads(run_uninterpreted("-m", "tests.support.launch_probe").stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["epilogue", "scalars", "alignment_constexpr", "gluon", "keywords", "layer",
                                  "one_pass_layer"])
def test_cached_launches_equal_tritons(probe, case):
    """Same kernel binary, grid, stream and arguments, call by call, as Triton's launch path."""
    triton_launches, direct_launches = probe[case]["triton"], probe[case]["direct"]
    assert all(triton_launches), "every call launches"
    assert direct_launches == triton_launches


def test_specializations_are_told_apart(probe):
    """The cases reach different compiled kernels, so equality above is not trivial: an int 2, a
    float 2.0 and a 1 (a constant to Triton) are three kernels; the epilogue cases several."""
    functions = [launches[0][3] for launches in probe["scalars"]["triton"]]
    assert len(set(functions[:3])) == 3
    assert functions[0] == functions[5] and functions[1] == functions[4]
    assert len({launches[0][3] for launches in probe["epilogue"]["triton"]}) >= 5


def test_alignment_and_constexprs_alone_reach_other_kernels(probe):
    """An output 4 bytes past alignment, and a block size, each make Triton compile another
    binary: a key without either would launch the wrong one (tests above would then fail)."""
    functions = [launches[0][3] for launches in probe["alignment_constexpr"]["triton"]]
    assert functions[0] == functions[2] == functions[4]
    assert len({functions[0], functions[1], functions[3]}) == 3


def test_seeds_share_a_cached_launch(probe):
    """Seed words are do-not-specialize parameters: two seeds, one entry per dtype."""
    assert probe["generator_entries"] == 2


def test_runtime_parameters_by_keyword_are_not_cached(probe):
    """A tensor given by keyword would be keyed by identity: such launches go through Triton."""
    assert probe["keyword_entries"] == 0


def test_layer_step_launches_its_kernels(probe):
    names = [launch[0] for launch in probe["layer"]["triton"][1]]  # M = 64: two-phase
    assert names.count("_seeded_epilogue_kernel") == 2 and names.count("_backbone_gen_v2_twin_kernel") == 2
    # M = 1: decode, whose forward's two launches the direct run replayed from its eager plan
    # (equal to Triton's above).
    assert [launch[0] for launch in probe["layer"]["triton"][0]][:2] == ["_seeded_decode_fwd_twin_kernel",
                                                                         "_seeded_epilogue_kernel"]
    assert probe["decode_plans"] == 1


def test_one_pass_layer_steps_replay_their_plans(probe):
    """One one-pass launch a direction; the direct run's calls replayed bound launches (equal to
    Triton's above): plans for the two M's with a gradient and the two without, and a
    tensor-parallel rank's block."""
    names = [[launch[0] for launch in launches] for launches in probe["one_pass_layer"]["triton"]]
    assert names[0] == names[2] == names[4] == ["_one_pass_twin_kernel"] * 2  # forward, input gradient
    assert names[1] == names[3] == ["_one_pass_twin_kernel"]
    assert probe["one_pass_plans"] == 5


def test_a_registered_launch_hook_sends_launches_through_triton(probe):
    assert probe["hook_calls"] == 1


def test_getters_take_any_number_of_positions():
    from lottalora_kernels.launch import _getter

    args = ("a", "b", "c")
    assert _getter([])(args) == ()
    assert _getter([1])(args) == ("b",)
    assert _getter([0, 2])(args) == ("a", "c")


def test_direct_launches_only_on_checked_triton_versions():
    from lottalora_kernels.launch import direct_launch_supported

    assert direct_launch_supported("3.6.0") and direct_launch_supported("3.9.1+git1234")
    assert not direct_launch_supported("3.7.1") and not direct_launch_supported("3.10.0")
    assert not direct_launch_supported("4.0.0") and not direct_launch_supported("nightly")
