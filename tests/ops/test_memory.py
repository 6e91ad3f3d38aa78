"""Bounded memory at every shape: a forward and backward peak at most twice the layer's dense
float32 weight plus a fixed allowance, however narrow or wide the layer.

The torch backend is measured (fresh processes, ru_maxrss). The Triton backend's transient
memory is its kernels' workspace, bounded by construction: the two-phase regime's chunk of W
and its float32 product (``two_phase.chunk_rows``) and the decode regime's partial sums (one
float32 output per split, ``decode.launch_splits``); the test below evaluates those sizes at the
big shapes, where an interpreted run would take minutes, and one interpreted run is measured at
a shape the interpreter runs in seconds.
"""

import pytest

from lottalora_kernels.seeded_linear import decode, two_phase
from lottalora_kernels.stream import spec as stream_spec
from tests.support.memory import peak_bytes_added_each

MiB = 2**20
# What a step may add besides twice the dense weight: the stream's generation passes, a chunk of
# signs, one row of activations and the gradients (at 2^20 x 1, B's and the bias's are each as
# large as W). Steps measure 21-38 MiB at the two narrow shapes (29-46 at 8192 x 8192); before
# row ranges made only their rows' calls, 1 x 2^20 took 150-220 MiB (its 64-row span made
# whole) and 2^20 x 1 64-69 MiB (benchmarks/NOTES.md).
ALLOWANCE = 40 * MiB
SHAPES = [(1, 2**20), (2**20, 1), (8192, 8192)]  # (out_features, in_features)


def _bound(out_features: int, in_features: int) -> int:
    return 2 * 4 * out_features * in_features + ALLOWANCE


_SETUP = """
import lottalora
torch.manual_seed(0)
layer = lottalora.Linear({k}, {n}, rank=1)
with torch.no_grad():
    layer.lora_B.normal_()
x = torch.randn(1, {k}, requires_grad=True)
lottalora.Linear(8, 8, rank=1)(torch.randn(2, 8, requires_grad=True)).sum().backward()  # first calls
"""
_STEP = """
layer(x).square().sum().backward()
"""


INTERPRETED_SHAPE = (256, 256)  # what the interpreter runs in seconds
_TRITON_SETUP = "import os\nos.environ['LOTTALORA_BACKEND'] = 'triton'\nos.environ['TRITON_INTERPRET'] = '1'\n"


@pytest.fixture(scope="module")
def measured() -> dict:
    """The peak of one step per case, each in a fresh process, the processes side by side."""
    runs = {("torch", n, k): (_SETUP.format(n=n, k=k), _STEP) for n, k in SHAPES}
    runs[("triton", *INTERPRETED_SHAPE)] = (_TRITON_SETUP + _SETUP.format(n=INTERPRETED_SHAPE[0],
                                                                          k=INTERPRETED_SHAPE[1]), _STEP)
    peaks = dict(zip(runs, peak_bytes_added_each(list(runs.values())), strict=True))
    # Each step makes at least its packed signs and a block of them: a measurement that saw
    # nothing would pass any bound.
    assert all(peak > MiB // 4 for peak in peaks.values()), peaks
    return peaks


@pytest.mark.parametrize("out_features,in_features", SHAPES)
def test_a_torch_backend_step_stays_within_twice_the_dense_weight(out_features, in_features, measured):
    """Forward and backward of one row through the layer, every gradient kept (x, A, B, beta,
    bias), measured in a fresh process."""
    peak = measured[("torch", out_features, in_features)]
    assert peak <= _bound(out_features, in_features), \
        f"{out_features} x {in_features}: {peak / MiB:.1f} MiB > {_bound(out_features, in_features) / MiB:.1f} MiB"


def _two_phase_workspace(m: int, out_features: int, in_features: int, element_size: int) -> int:
    """Bytes a two-phase forward or input gradient holds besides its inputs and outputs: the chunk
    of W it generates and the chunk's float32 product (the larger of the two directions), plus
    the float32 copy of x or dy where torch.mm has no out_dtype (16-bit inputs off CUDA)."""
    worst = 0
    for total, other, granule in ((out_features, in_features, stream_spec.V2_ROW_SPAN),   # forward: rows of W
                                  (in_features, out_features, stream_spec.V2_COL_SPAN)):  # input gradient: columns
        rows = two_phase.chunk_rows(total, other, element_size, granule, m)
        copy = 4 * m * other if element_size < 4 else 0
        worst = max(worst, rows * other * element_size + 4 * m * rows + copy)
    return worst


def _decode_workspace(m: int, out_features: int, in_features: int) -> int:
    """Bytes of the decode regime's float32 partial sums: (splits, m, outputs) in each direction,
    the splits at most MAX_SPLITS and never more than the reduction's call spans."""
    worst = 0
    for n_out, n_red, red_span in ((out_features, in_features, stream_spec.V2_COL_SPAN),   # forward
                                   (in_features, out_features, stream_spec.V2_ROW_SPAN)):  # input gradient
        n_spans = -(-n_red // red_span)
        splits, _ = decode.launch_splits(n_spans, min(n_spans, decode.MAX_SPLITS))
        worst = max(worst, 4 * splits * m * n_out)
    return worst


@pytest.mark.parametrize("out_features,in_features", SHAPES)
@pytest.mark.parametrize("element_size", [2, 4])
def test_the_triton_kernels_workspace_is_bounded_by_construction(out_features, in_features, element_size):
    """At one row (the torch test's step) every regime holds at most twice the dense weight plus
    the allowance. At any M (decode: up to its 32 rows; two-phase: up to 2^16) add one float32
    copy of the activations (the product the epilogue reads is the output's size in float32)."""
    def bound(m):
        return _bound(out_features, in_features) + (4 * m * (out_features + in_features) if m > 1 else 0)
    for m in (1, 8, decode.MAX_M):
        assert _decode_workspace(m, out_features, in_features) <= bound(m), f"decode at M={m}"
    for m in (1, 64, 4096, 2**16):
        assert _two_phase_workspace(m, out_features, in_features, element_size) <= bound(m), f"two-phase at M={m}"


def test_an_interpreted_triton_step_stays_within_twice_the_dense_weight(measured):
    """The Triton backend's step (interpreted, fresh process) at a shape the interpreter runs in
    seconds, measured as the torch backend's is."""
    peak, bound = measured[("triton", *INTERPRETED_SHAPE)], _bound(*INTERPRETED_SHAPE)
    assert peak <= bound, f"{peak / MiB:.1f} MiB > {bound / MiB:.1f} MiB"
