"""Every kernel variant compiles for Hopper (sm_90) here, with no GPU, and holds no FMA.

Catches what the interpreter cannot: lowering failures of tl.dot shapes, layouts or casts on a
real target, and a multiply-add contracted into an FMA (which would change the backbone's bits;
see backbone_tile.py). Uses the ptxas bundled with Triton, in a subprocess without
TRITON_INTERPRET (interpreted kernels cannot be compiled).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
    pytest.skip("Triton's bundled ptxas is missing", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def reports():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import json; from benchmarks.kernel_report import compile_checks; print(json.dumps(compile_checks()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_generator_compiles_for_sm90_without_fma_or_spills(reports):
    gens = [r for r in reports if r["kernel"] == "gen"]
    assert {r["init"] for r in gens} == {"gaussian", "uniform", "rademacher"}
    for r in gens:
        assert r["ptx_fma"] == 0, r
        assert r["spill_stores"] == 0, r


def test_fused_matmul_compiles_for_sm90_with_wgmma_and_without_fma(reports):
    mats = [r for r in reports if r["kernel"] in ("fwd", "dx")]
    assert len(mats) == 6
    for r in mats:
        if r["dtype"] == "fp32":
            # An IEEE float32 tl.dot has no tensor-core path: Triton lowers it to explicit FMAs,
            # which compute the matmul, not backbone values. It only has to compile.
            assert not r["uses_wgmma"], r
            continue
        assert r["ptx_fma"] == 0, r
        assert r["uses_wgmma"], r
