"""Candidate B's count-only probe (benchmarks.probes.ws_forward): it compiles for sm_90 without
spills (in a process of its own, without TRITON_INTERPRET), and the tile its generator writes,
replayed here from the kernel's index arithmetic on the PyTorch twin's Philox, is W's own rows."""

import json

import pytest
import torch

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


def _generated_tile(seed: int, stream: int, pid_n: int, span: int) -> torch.Tensor:
    """The 128 x 128 signs the generator stores for program column pid_n and span ``span``: a
    thread (O, a, pair) makes calls (64 span + 8 a + c, 2 pid_n + O) for c = 2 pair, 2 pair + 1;
    chunk j, block row p', column block q and the pair's half land at row 32 j + 16 p' + 8 O + a,
    column 8 q + 2 pair + half (v2_pick_word's word j, v2_sign_pairs_pq's merge and shift)."""
    from lottalora.backbone.philox import philox4x32
    from lottalora_kernels.stream import spec

    seed_lo, seed_hi, stream_lo, stream_hi = spec.words(seed, stream)
    o_span, a, pair, half = torch.meshgrid(*(torch.arange(n) for n in (2, 8, 4, 2)), indexing="ij")
    shape = o_span.shape
    counter = (64 * span + 8 * a + 2 * pair + half, 2 * pid_n + o_span, torch.full(shape, stream_lo),
               torch.full(shape, stream_hi))
    words = torch.stack(philox4x32((seed_lo, seed_hi), counter), dim=-1)  # (O, a, pair, half, word)
    tile = torch.zeros(128, 128)
    for j in range(4):
        word_a, word_b = words[..., 0, j], words[..., 1, j]  # (O, a, pair)
        for p_low in range(2):
            if p_low == 0:  # p = 2 j + p' even: the low half-words
                merged = (word_a & 0xFFFF) | ((word_b << 16) & 0xFFFFFFFF)
            else:
                merged = (word_a >> 16) | (word_b & 0xFFFF0000)
            for q in range(16):
                shifted = (merged << (15 - q)) & 0xFFFFFFFF
                for h, bit in ((0, 15), (1, 31)):
                    signs = 1.0 - 2.0 * ((shifted >> bit) & 1).to(torch.float32)  # bit 1: -1
                    for o_s in range(2):
                        rows = 32 * j + 16 * p_low + 8 * o_s + torch.arange(8)
                        for pr in range(4):
                            tile[rows, 8 * q + 2 * pr + h] = signs[o_s, :, pr]
    return tile


@pytest.mark.parametrize("pid_n, span", [(0, 0), (3, 5)])
def test_the_generated_tile_is_the_streams_rows(pid_n, span):
    from benchmarks.probes.ws_forward import tile_row_to_o
    from lottalora.backbone.stream_v2 import write_signs

    seed, stream = 0x1234_5678_9ABC, 7
    rows = 128 * pid_n + torch.tensor([tile_row_to_o(t) for t in range(128)])
    assert sorted(rows.tolist()) == list(range(128 * pid_n, 128 * (pid_n + 1)))  # a permutation of the rows
    w = torch.empty(128, 128)
    write_signs(w, seed, stream, (128 * pid_n, 128 * (pid_n + 1)), (128 * span, 128 * (span + 1)))
    assert torch.equal(_generated_tile(seed, stream, pid_n, span), w[rows - 128 * pid_n])
