"""The backbone stream: definition, golden values, statistics, independence, determinism."""

import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from lottalora import BackboneSpec, backbone_block
from lottalora.backbone import backbone_signs, philox4x32
from lottalora_kernels.stream import spec
from tests.support.numpy_stream import backbone as numpy_backbone
from tests.support.numpy_stream import backbone_v2 as numpy_backbone_v2
from tests.support.numpy_stream import philox4x32_10 as numpy_philox

V1_INITS = spec.VERSION_INITS[1]

# Random123's published known-answer vectors for Philox4x32-10: (counter, key, output).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# Stream version 1, seed 0x0123456789ABCDEF, stream 42, a 70000 x 1000 layer: W[o, i] at these
# points. These bits are a file format: they change only with STREAM_VERSION.
GOLDEN_POINTS = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 999), (69999, 997), (12345, 501)]
GOLDEN = {
    "gaussian": ["0x1.d80874p-10", "0x1.970844p-6", "0x1.05a100p-5", "0x1.6afed0p-5",
                 "0x1.5c1f62p-8", "-0x1.31cf2ep-6", "-0x1.0a7390p-5"],
    "uniform": ["0x1.e3799cp-7", "-0x1.0efc82p-6", "-0x1.1cf97ep-6", "-0x1.6a0c60p-6",
                "-0x1.afc2eap-6", "0x1.2e3b04p-6", "0x1.0f9a4ap-6"],
    "rademacher": ["-0x1.030dc4p-5", "0x1.030dc4p-5", "0x1.030dc4p-5", "0x1.030dc4p-5",
                   "0x1.030dc4p-5", "-0x1.030dc4p-5", "-0x1.030dc4p-5"],
}
EDGE_SEEDS = [0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_matches_random123_known_answers(counter, key, expected):
    words = philox4x32(key, tuple(torch.tensor([c], dtype=torch.int64) for c in counter))
    assert tuple(int(w) for w in words) == expected
    assert tuple(int(w[()]) for w in numpy_philox(key, counter)) == expected


def test_stream_versions_and_rounds_are_pinned():
    assert spec.STREAM_VERSION == 2 and spec.SUPPORTED_STREAM_VERSIONS == (1, 2) and spec.PHILOX_ROUNDS == 10


@pytest.mark.parametrize("init", V1_INITS)
def test_v1_golden_values_are_pinned(init):
    s = BackboneSpec(0x0123456789ABCDEF, 42, 1000, 70000, init, version=1)
    got = [backbone_block(s, rows=(o, o + 1), cols=(i, i + 1))[0, 0].item() for o, i in GOLDEN_POINTS]
    assert [float.fromhex(h) for h in GOLDEN[init]] == got


@pytest.mark.parametrize("init", V1_INITS)
@pytest.mark.parametrize("seed,stream", [(0, 0), (2**64 - 1, 2**64 - 1), (123456789012345, 7)])
def test_v1_reference_matches_the_documented_definition_in_numpy(init, seed, stream):
    s = BackboneSpec(seed, stream, 37, 23, init, version=1)
    expected = numpy_backbone(seed, stream, 37, 23, init)
    got = backbone_block(s).numpy()
    assert np.array_equal(got.view(np.int32), expected.view(np.int32))


@pytest.mark.parametrize("version,init", [(1, i) for i in V1_INITS] + [(2, "rademacher")])
def test_any_sub_block_equals_the_slice_of_the_whole(version, init):
    s = BackboneSpec(5, 6, 253, 139, init, version=version)
    whole = backbone_block(s)
    for rows, cols in [((0, 139), (0, 253)), ((3, 17), (5, 50)), ((138, 139), (252, 253)), ((7, 8), (1, 2)),
                       ((63, 130), (127, 250)), ((64, 128), (128, 253))]:
        block = backbone_block(s, rows=rows, cols=cols)
        assert torch.equal(block, whole[rows[0]:rows[1], cols[0]:cols[1]])


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("version,init", [(1, i) for i in V1_INITS] + [(2, "rademacher")])
def test_init_statistics_on_a_large_block(version, init):
    in_features = 1024
    w = backbone_block(BackboneSpec(11, 3, in_features, 1024, init, version=version)).double().flatten()
    std = 1 / math.sqrt(in_features)
    n = w.numel()
    expected_std = {"gaussian": std, "uniform": std / math.sqrt(3), "rademacher": std}[init]
    assert abs(w.mean().item()) < 5 * expected_std / math.sqrt(n)
    assert w.std().item() == pytest.approx(expected_std, rel=5 / math.sqrt(n) + 1e-4)
    z = w / std
    if init == "rademacher":
        bound = spec.backbone_std(in_features)
        assert set(torch.unique(w.float()).tolist()) == {-bound, bound}
        assert (w > 0).double().mean().item() == pytest.approx(0.5, abs=5 * 0.5 / math.sqrt(n))
    elif init == "uniform":
        assert z.min().item() >= -1.0 and z.max().item() < 1.0
        ks = (torch.sort(z).values.add(1).div(2) - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max()
        assert ks.item() < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov at the 1% level
    else:
        zs = torch.sort(z).values
        ks = (_normal_cdf(zs) - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max()
        assert ks.item() < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov at the 1% level
        skew = (z ** 3).mean().item()
        kurtosis = (z ** 4).mean().item()
        assert abs(skew) < 5 * math.sqrt(15 / n)
        assert kurtosis == pytest.approx(3.0, abs=5 * math.sqrt(96 / n))
        assert zs.abs().max().item() <= math.sqrt(-2 * math.log(2.0**-24)) + 1e-6


def test_gaussian_transform_is_accurate_against_exact_box_muller():
    """The frozen polynomials track the true log/sin/cos to float32 resolution."""
    s = BackboneSpec(9, 9, 64, 64, "gaussian", version=1)
    got = backbone_block(s).double() * 8.0  # std = 1/8: back to N(0, 1)
    words = philox4x32((9, 0), (
        torch.arange(16).repeat(64, 1), torch.arange(64)[:, None].expand(64, 16),
        torch.full((64, 16), 9), torch.zeros(64, 16, dtype=torch.int64)))
    def exact(a, b):
        u = (2 * (a >> 9) + 1).double() * 2.0**-24
        r = torch.sqrt(-2 * torch.log(u))
        theta = (b >> 30).double() * math.pi / 2 + ((b >> 7) & 0x7FFFFF).double() * 2.0**-23 * math.pi / 2
        return r * torch.cos(theta), r * torch.sin(theta)
    z0, z1 = exact(words[0], words[1])
    z2, z3 = exact(words[2], words[3])
    want = torch.stack([z0, z1, z2, z3], -1).reshape(64, 64)
    assert (got - want).abs().max().item() < 2e-5


@pytest.mark.parametrize("seed_a,seed_b,stream_a,stream_b", [
    (0, 1, 0, 0), (0, 2**32, 0, 0), (5, 5, 0, 1), (5, 5, 0, 2**32), (2**64 - 1, 2**64 - 2, 0, 0),
])
@pytest.mark.parametrize("version", [1, 2])
def test_different_seeds_and_streams_are_uncorrelated(seed_a, seed_b, stream_a, stream_b, version):
    a = backbone_block(BackboneSpec(seed_a, stream_a, 256, 256, version=version)).double().flatten()
    b = backbone_block(BackboneSpec(seed_b, stream_b, 256, 256, version=version)).double().flatten()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(a.numel())
    # Binary values agree half the time by chance; continuous ones almost never.
    assert (a == b).double().mean().item() < (0.5 + 5 * 0.5 / math.sqrt(a.numel()) if version == 2 else 1e-3)


@pytest.mark.parametrize("version", [1, 2])
def test_neighbouring_rows_and_columns_are_uncorrelated(version):
    w = backbone_block(BackboneSpec(1, 0, 512, 512, version=version)).double()
    n = w.numel()
    # v2 neighbours at distance 8 share a Philox call (same residues, next bit): checked too.
    for a, b in [(w[:, :-1], w[:, 1:]), (w[:-1], w[1:]), (w[:, :-4], w[:, 4:]), (w[:, :-8], w[:, 8:]),
                 (w[:-8], w[8:]), (w[:-1, :-1], w[1:, 1:]), (w[:, :-128], w[:, 128:]), (w[:-64], w[64:])]:
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(corr) < 5 / math.sqrt(n)


@pytest.mark.parametrize("seed", EDGE_SEEDS)
def test_edge_seeds_give_finite_distinct_values(seed):
    w = backbone_block(BackboneSpec(seed, seed, 64, 32, version=1))
    assert torch.isfinite(w).all()
    assert torch.unique(w).numel() > 0.99 * w.numel()
    assert w.std().item() == pytest.approx(1 / 8, rel=0.1)
    signs = backbone_signs(BackboneSpec(seed, seed, 256, 128))
    assert set(torch.unique(signs).tolist()) == {-1.0, 1.0}
    assert signs.mean().item() == pytest.approx(0.0, abs=5 / math.sqrt(signs.numel()))
    assert torch.unique(signs, dim=0).shape[0] == signs.shape[0]  # no two rows alike


@pytest.mark.parametrize("version,init", [(1, "gaussian"), (2, "rademacher")])
def test_backbone_is_identical_across_processes(version, init):
    code = (
        "import hashlib; from lottalora import BackboneSpec, backbone_block;"
        f"w = backbone_block(BackboneSpec(2**63 + 5, 77, 129, 33, {init!r}, version={version}));"
        "print(hashlib.sha256(w.numpy().tobytes()).hexdigest())"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    here = backbone_block(BackboneSpec(2**63 + 5, 77, 129, 33, init, version=version))
    import hashlib
    assert runs[0] == runs[1] == hashlib.sha256(here.numpy().tobytes()).hexdigest() + "\n"


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(seed=-1), ValueError, "seed"), (dict(seed=2**64), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"), (dict(seed=True), TypeError, "seed"),
    (dict(stream=-3), ValueError, "stream"), (dict(init="normal"), ValueError, "init"),
    (dict(in_features=0), ValueError, "in_features"), (dict(out_features=-2), ValueError, "out_features"),
    (dict(out_features=2**32 + 1), ValueError, "out_features"),
    (dict(in_features=2**33 + 1, version=2, init="rademacher"), ValueError, "in_features"),
    (dict(version=3), ValueError, "stream_version"), (dict(version="2"), ValueError, "stream_version"),
    (dict(version=2, init="gaussian"), ValueError, "not provided by stream version 2"),
])
def test_bad_spec_arguments_are_named(kwargs, error, match):
    args = dict(seed=0, stream=0, in_features=4, out_features=4, init="gaussian", version=1) | kwargs
    with pytest.raises(error, match=match):
        BackboneSpec(**args)


def test_block_outside_the_backbone_is_refused():
    with pytest.raises(ValueError, match="outside"):
        backbone_block(BackboneSpec(0, 0, 8, 8), rows=(0, 9))


# Stream version 2, seed 0x0123456789ABCDEF, stream 42, a 70000 x 1000 layer: the signs at these
# points (the weight is sign * f32(1/sqrt(1000)) = sign * 0x1.030dc4p-5), the first 64 signs of
# row 0 as bits (1: -1), and the SHA-256 of a 130 x 300 block's bits as bytes (1: -1) under
# seed 2^64 - 1, stream 2^63 + 5. A file format: these change only with a new stream version.
V2_GOLDEN_POINTS = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 999), (69999, 997), (12345, 501), (7, 8), (63, 127),
                    (64, 128)]
V2_GOLDEN_SIGNS = [-1, -1, 1, 1, 1, -1, 1, 1, 1, -1]
V2_GOLDEN_ROW0 = "1100110011110001001100101101110001010000001110011001101100011110"
V2_GOLDEN_BLOCK_SHA256 = "ff4b2ed2648499721860040fee80b06cac45f68d9a4b13aa42c2629531b0ec03"


def test_v2_golden_values_are_pinned():
    s = BackboneSpec(0x0123456789ABCDEF, 42, 1000, 70000)
    assert (s.version, s.init) == (2, "rademacher")
    std = float.fromhex("0x1.030dc4p-5")
    got = [backbone_block(s, rows=(o, o + 1), cols=(i, i + 1))[0, 0].item() for o, i in V2_GOLDEN_POINTS]
    assert got == [sign * std for sign in V2_GOLDEN_SIGNS]
    row0 = backbone_signs(s, rows=(0, 1), cols=(0, 64))[0]
    assert "".join("1" if v < 0 else "0" for v in row0.tolist()) == V2_GOLDEN_ROW0
    block = backbone_signs(BackboneSpec(2**64 - 1, 2**63 + 5, 300, 130))
    assert hashlib.sha256((block.numpy() < 0).astype(np.uint8).tobytes()).hexdigest() == V2_GOLDEN_BLOCK_SHA256


@pytest.mark.parametrize("seed,stream,K,N", [(0, 0, 37, 23), (2**64 - 1, 2**64 - 1, 300, 200),
                                             (123456789012345, 7, 129, 65), (5, 2**32, 1, 1)])
def test_v2_reference_matches_the_documented_definition_in_numpy(seed, stream, K, N):
    got = backbone_block(BackboneSpec(seed, stream, K, N)).numpy()
    expected = numpy_backbone_v2(seed, stream, K, N)
    assert np.array_equal(got.view(np.int32), expected.view(np.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_v2_signs_are_exact_in_every_dtype(dtype):
    s = BackboneSpec(3, 4, 200, 70)
    signs = backbone_signs(s, dtype=dtype)
    assert signs.dtype == dtype and set(torch.unique(signs.float()).tolist()) == {-1.0, 1.0}
    assert torch.equal(signs.float() * s.std, backbone_block(s))


def test_v2_bits_of_one_call_are_balanced_and_independent():
    """The 128 bits of a call feed 128 weights: every bit position is fair and no two positions
    are correlated (over 4096 calls, the weights of 2^19 positions)."""
    s = BackboneSpec(77, 1, 128 * 64, 64 * 8)
    signs = backbone_signs(s).double()  # 8 row spans x 64 column spans
    # (O, p, a, I, q, c) -> one row per call (O, I, a, c), one column per bit n = 16 p + q
    calls = signs.reshape(8, 8, 8, 64, 16, 8).permute(0, 3, 2, 5, 1, 4).reshape(-1, 128)
    n_calls = calls.shape[0]
    assert calls.mean(0).abs().max().item() < 5 / math.sqrt(n_calls)
    corr = (calls.T @ calls) / n_calls - torch.eye(128, dtype=torch.float64)
    # 128 * 127 / 2 pairs: the largest |correlation| stays within 5.5 sigma of independence.
    assert corr.abs().max().item() < 5.5 / math.sqrt(n_calls)


def test_v2_singular_values_follow_the_marchenko_pastur_law():
    """A square matrix of independent fair signs scaled by 1/sqrt(n) has singular values on
    [0, 2] with the quarter-circle density (Marchenko-Pastur at ratio 1); structure the
    counter layout could introduce (repeated rows, correlated spans) would break it."""
    n = 512
    w = backbone_block(BackboneSpec(2024, 9, n, n)).double()  # sign / sqrt(n)
    sv = torch.linalg.svdvals(w)
    assert sv.max().item() == pytest.approx(2.0, rel=0.05)
    # CDF of the quarter circle for s in [0, 2]: F(s) = (s sqrt(4 - s^2) / 2 + 2 asin(s / 2)) / pi
    s_sorted = torch.sort(sv).values.clamp(max=2.0)
    cdf = (s_sorted * torch.sqrt(4 - s_sorted**2) / 2 + 2 * torch.asin(s_sorted / 2)) / math.pi
    ks = (cdf - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max().item()
    assert ks < 0.03


def test_default_spec_is_version_2_and_gaussian_alone_means_version_1():
    assert (BackboneSpec(0, 0, 4, 4).version, BackboneSpec(0, 0, 4, 4).init) == (2, "rademacher")
    assert BackboneSpec(0, 0, 4, 4, "gaussian").version == 1
    assert BackboneSpec(0, 0, 4, 4, "rademacher").version == 2
    assert BackboneSpec(0, 0, 4, 4, version=1).init == "gaussian"
    assert BackboneSpec(0, 0, 4, 4, "rademacher", version=1) != BackboneSpec(0, 0, 4, 4, "rademacher", version=2)


def test_v2_packed_bytes_are_the_same_on_either_host_byte_order():
    """The byte-view route (little-endian hosts) and the arithmetic route (any host) agree."""
    from lottalora.backbone import stream_v2

    little = stream_v2.span_bytes(2**64 - 1, 77, (1, 3), (2, 5), torch.device("cpu"), little_endian=True)
    arithmetic = stream_v2.span_bytes(2**64 - 1, 77, (1, 3), (2, 5), torch.device("cpu"), little_endian=False)
    assert little.dtype == arithmetic.dtype == torch.uint8 and torch.equal(little, arithmetic)


def _mma_a_fragment(lane: int, rows: int, cols: int):
    """(row, col) of every element lane ``lane`` holds of an mma.sync m16n8k16 A operand tiled
    over a rows x cols warp tile (rows, cols multiples of 16): rows g, g + 8 of each 16-row
    block, columns 2t, 2t + 1, 2t + 8, 2t + 9 of each 16-column step (g = lane div 4, t = lane mod 4)."""
    g, t = divmod(lane, 4)
    return [(r0 + g + 8 * h, c0 + 2 * t + 8 * kh + j) for r0 in range(0, rows, 16) for c0 in range(0, cols, 16)
            for h in (0, 1) for kh in (0, 1) for j in (0, 1)]


def _v2_call_and_bit(o: int, i: int) -> tuple[tuple[int, int], int]:
    """docs/backbone.md: the call (c0, c1) and bit (16 p + q) of W[o, i]."""
    return (64 * (i // 128) + 8 * (o % 8) + i % 8, o // 64), 16 * ((o // 8) % 8) + (i // 8) % 16


@pytest.mark.parametrize("direction", ["forward", "input gradient"])
def test_v2_each_fragment_thread_consumes_exactly_two_whole_calls_per_span(direction):
    """The layout's reason to be: in the forward (W as the A operand, a warp's 64 rows of o by a
    128-column span of i) and in the input gradient (W^T as the A operand, a warp's 128 rows of i
    by a 64-column span of o), each of the 32 threads needs exactly two Philox calls, uses all
    128 bits of both, and shares none with another thread: no redundant Philox, no exchange."""
    rows, cols = (64, 128) if direction == "forward" else (128, 64)
    calls_of_lane, bits_of_call = {}, {}
    for lane in range(32):
        calls = set()
        for r, c in _mma_a_fragment(lane, rows, cols):
            o, i = (r, c) if direction == "forward" else (c, r)
            call, bit = _v2_call_and_bit(o, i)
            calls.add(call)
            bits_of_call.setdefault(call, []).append((lane, bit))
        calls_of_lane[lane] = calls
    assert all(len(calls) == 2 for calls in calls_of_lane.values())
    for call, uses in bits_of_call.items():
        assert len({lane for lane, _ in uses}) == 1, f"call {call} is needed by several threads"
        assert sorted(bit for _, bit in uses) == list(range(128)), f"call {call} is not used bit for bit"


@pytest.mark.parametrize("version", [1, 2])
def test_backbone_block_writes_into_a_given_tensor(version):
    s = BackboneSpec(4, 5, 300, 70, version=version)
    out = torch.full((40, 200), float("nan"))
    assert backbone_block(s, rows=(10, 50), cols=(50, 250), out=out) is out
    assert torch.equal(out, backbone_block(s)[10:50, 50:250])
    with pytest.raises(ValueError, match="out must be"):
        backbone_block(s, rows=(10, 50), cols=(50, 250), out=torch.empty(40, 200, dtype=torch.float64))


# Row ranges that start or stop inside a 64-row span: one row, a few rows whose residues wrap
# (6..9), a range across a span boundary, whole spans with partial ends, and whole spans.
V2_ODD_ROW_RANGES = [(0, 1), (5, 6), (6, 10), (63, 65), (7, 71), (10, 17), (1, 199), (130, 200), (64, 128), (0, 200)]


@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize("calls_per_pass", [None, 8])
def test_v2_any_row_range_packs_the_same_bytes_as_its_whole_spans(little_endian, calls_per_pass, monkeypatch):
    """sign_bytes on any rows (only their calls) equals the rows of the whole spans' bytes, in
    one pass or in passes of a single call's worth of columns."""
    from lottalora.backbone import stream_v2

    if calls_per_pass is not None:
        monkeypatch.setattr(stream_v2, "CALLS_PER_PASS", calls_per_pass)
    whole = stream_v2.span_bytes(2**64 - 1, 77, (0, 4), (1, 4), torch.device("cpu"), little_endian=little_endian)
    for rows in V2_ODD_ROW_RANGES:
        got = stream_v2.sign_bytes(2**64 - 1, 77, rows, (1, 4), torch.device("cpu"), little_endian=little_endian)
        assert got.dtype == torch.uint8 and torch.equal(got, whole[rows[0]:rows[1]]), rows


def test_v2_odd_row_ranges_match_the_documented_definition_in_numpy():
    s = BackboneSpec(123456789012345, 7, 300, 200)
    expected = numpy_backbone_v2(s.seed, s.stream, 300, 200)
    for rows in V2_ODD_ROW_RANGES:
        got = backbone_block(s, rows=rows, cols=(3, 260)).numpy()
        assert np.array_equal(got.view(np.int32), expected[rows[0]:rows[1], 3:260].view(np.int32)), rows


@pytest.mark.parametrize("rows,calls", [((0, 1), 8), ((13, 14), 8), ((6, 10), 32), ((60, 68), 64),
                                        ((0, 64), 64), ((3, 200), 256)])
def test_v2_a_row_range_makes_only_the_calls_its_rows_use(rows, calls, monkeypatch):
    """Row o uses the calls with a = o mod 8 of its span: one row costs 8 calls per column span
    (1/8 of the span's 64), a partial span the calls of its rows' residues, whole spans all."""
    from lottalora.backbone import stream_v2

    made = []
    real = stream_v2.philox4x32
    monkeypatch.setattr(stream_v2, "philox4x32", lambda key, counter: made.append(counter[0].numel())
                        or real(key, counter))
    stream_v2.sign_bytes(5, 6, rows, (2, 3), torch.device("cpu"))  # one column span
    assert sum(made) == calls


def test_v2_generation_passes_stay_within_their_call_budget(monkeypatch):
    """A row of 2^20 columns and 2^18 rows of one column span are generated in passes of at most
    CALLS_PER_PASS calls: the int64 temporaries do not grow with the layer."""
    from lottalora.backbone import stream_v2

    made = []
    real = stream_v2.philox4x32
    monkeypatch.setattr(stream_v2, "philox4x32", lambda key, counter: made.append(counter[0].numel())
                        or real(key, counter))
    stream_v2.sign_bytes(0, 0, (3, 4), (0, 2**13), torch.device("cpu"))  # one row of 2^20 columns
    assert max(made) <= stream_v2.CALLS_PER_PASS and sum(made) == 8 * 2**13
    made.clear()
    stream_v2.sign_bytes(0, 0, (0, 2**18), (0, 1), torch.device("cpu"))
    assert max(made) <= stream_v2.CALLS_PER_PASS and sum(made) == 2**18
