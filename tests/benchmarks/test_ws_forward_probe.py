"""Candidate B's count-only probe (benchmarks.probes.ws_forward) compiles for sm_90 without
spills, in a process of its own without TRITON_INTERPRET; it imports nothing from benchmarks/."""

import json

import pytest

from tests.support.processes import run_uninterpreted, skip_without_ptxas

skip_without_ptxas()
triton = pytest.importorskip("triton")
if tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 9):
    pytest.skip("the probe is written against Triton 3.9's Gluon (warp_specialize, TMA)", allow_module_level=True)


def test_ws_forward_probe_compiles_without_spills():
    out = run_uninterpreted("-m", "benchmarks.probes.ws_forward", "--json")
    counts = json.loads(out.stdout)
    assert (counts["spill_stores"], counts["spill_loads"], counts["stack_bytes"]) == (0, 0, 0)
    loops = counts["partitions"]
    assert set(loops) == {"consumers", "generator", "loader"}  # each partition's loop was found
    assert all(loop["spills"] == 0 for loop in loops.values())
    assert counts["shared_bytes"] <= 227 * 1024  # one program fits an SM
