"""Checks that only mean something on a real GPU: the compiled and Gluon fast paths against the
CPU reference, bit for bit where the contract is bits, and every regime end to end. Skipped
without CUDA (the interpreter runs the plain-Triton twins of these kernels in CI)."""

import pytest
import torch

import lottalora
from lottalora.backbone import backbone_signs
from lottalora_kernels.backbone_gen import generate_backbone
from lottalora_kernels.dtypes import TL_DTYPES
from lottalora_kernels.gluon import gluon_failed
from lottalora_kernels.seeded_linear import decode, dispatch
from lottalora_kernels.stream import spec
from tests.support.tolerances import assert_close_to_baseline

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("version,init", [(1, i) for i in spec.VERSION_INITS[1]] + [(2, "rademacher")])
def test_compiled_generator_is_bit_identical_to_the_cpu_reference(version, init):
    s = lottalora.BackboneSpec(2**64 - 7, 2**40 + 9, 3001, 1037, init, version)
    cpu = lottalora.backbone_block(s)
    gpu = generate_backbone(s.seed, s.stream, 3001, init, (0, 1037), (0, 3001), "cuda", version=version).cpu()
    mismatches = (gpu.view(torch.int32) != cpu.view(torch.int32)).sum().item()
    assert mismatches == 0, f"{mismatches} of {cpu.numel()} values differ"
    torch_on_gpu = lottalora.backbone_block(s, device="cuda").cpu()
    assert torch.equal(torch_on_gpu.view(torch.int32), cpu.view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("rows,cols", [((0, 1037), (0, 3001)), ((63, 700), (129, 1000))])
def test_v2_generators_give_the_reference_signs(dtype, fast, rows, cols):
    s = lottalora.BackboneSpec(12345, 678, 3001, 1037)
    want = backbone_signs(s, rows=rows, cols=cols, dtype=dtype)
    got = generate_backbone(s.seed, s.stream, 3001, s.init, rows, cols, "cuda", version=2, dtype=dtype, signs=True,
                            fast=fast).cpu()
    assert torch.equal(got, want), f"{(got != want).sum().item()} signs differ"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("m", [1, 9, 16, 27])
def test_decode_kernel_generates_the_reference_signs(dtype, fast, m):
    """With x = rows of the identity, every partial sum is one weight times 1.0: exact. So the
    kernel's own W (Gluon fast path: mma fragments and inline PTX) is read back bit for bit."""
    K, N = 384, 700
    s = lottalora.BackboneSpec(2**63 + 1, 5, K, N)
    want = backbone_signs(s, dtype=torch.float32)
    got = torch.empty(N, K)
    for k0 in range(0, K, m):
        k1 = min(k0 + m, K)
        x = torch.zeros(k1 - k0, K, dtype=dtype, device="cuda")
        x[torch.arange(k1 - k0), torch.arange(k0, k1)] = 1
        block_n = 64 * 4
        n_spans = -(-K // 128)
        partial = torch.empty((n_spans, k1 - k0, N), device="cuda")
        grid = (-(-N // block_n), n_spans)
        args = (x, partial, x, x, partial, k1 - k0, N, K, 0, *x.stride(), *x.stride(), 0, 0,
                *spec.int32_words(s.seed, s.stream), 1, grid[0])
        if fast:
            decode._seeded_decode_fwd_kernel[grid](*args, NUM_WARPS=4, M_PAD=decode._m_pad(k1 - k0),
                                                         DTYPE=TL_DTYPES[dtype], num_warps=4)
        else:
            twin_pad = max(16, decode._m_pad(k1 - k0))
            decode._seeded_decode_fwd_twin_kernel[grid](*args, NUM_WARPS=4, M_PAD=twin_pad,
                                                              DOT_DTYPE=TL_DTYPES[dtype],
                                                              INPUT_PRECISION="ieee", num_warps=4)
        got[:, k0:k1] = partial.sum(0).T.cpu()
    assert torch.equal(got, want), f"{(got != want).sum().item()} weights differ"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("m", [1, 9, 16, 27])
def test_decode_dx_kernel_generates_the_reference_signs(dtype, fast, m):
    """The input-gradient twin of the test above: with dy = rows of the identity and beta = 1,
    dx's row j is W's row j times std, one product per element: exact up to the sign."""
    K, N = 700, 384
    s = lottalora.BackboneSpec(2**63 + 1, 5, K, N)
    want = backbone_signs(s, dtype=torch.float32)
    std = torch.tensor(spec.backbone_std(K)).to(dtype).float()  # float32 first, as the epilogue rounds
    got = torch.empty(N, K)
    for n0 in range(0, N, m):
        n1 = min(n0 + m, N)
        dy = torch.zeros(n1 - n0, N, dtype=dtype, device="cuda")
        dy[torch.arange(n1 - n0), torch.arange(n0, n1)] = 1
        dx, _ = decode.decode_bwd_dx(dy, seed=s.seed, stream=s.stream, in_features=K, dy_b=None,
                                                   lora_A=None, beta=torch.ones((), device="cuda"), scale=0.0,
                                                   fast=fast)
        got[n0:n1] = dx.float().cpu()
    assert torch.equal(got.abs(), torch.full_like(got, std.item())), "a weight is not exactly +-std"
    assert torch.equal(torch.sign(got), want), f"{(torch.sign(got) != want).sum().item()} weights differ"


def _layer_case(dtype, M, version, K=1000, N=777, rank=16):
    layer = lottalora.Linear(K, N, rank=rank, seed=5, stream_version=version, device="cuda", dtype=dtype)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.1)
        layer.beta.fill_(0.9)
    x = torch.randn(M, K, device="cuda", dtype=dtype, requires_grad=True)
    return layer, x


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 16, 17, 32, 33, 300, 2049])
def test_forward_and_backward_match_float64_in_every_regime(version, dtype, M, monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    _check_layer_against_float64(version, dtype, M)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 16, 17, 64, 300, 2049])
def test_whole_layers_with_the_one_pass_switch_on_match_float64(dtype, M, monkeypatch):
    """LOTTALORA_ONE_PASS=1: forward and input gradient of a whole layer on the one-pass kernels
    at every M (the switch stays off by default until this holds on a GPU)."""
    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    monkeypatch.setenv("LOTTALORA_ONE_PASS", "1")
    assert dispatch.forward_regime(2, M, dtype, True) == "one_pass"
    _check_layer_against_float64(2, dtype, M)
    assert not gluon_failed("one_pass_fwd") and not gluon_failed("one_pass_dx"), "a Gluon kernel fell back"


def _check_layer_against_float64(version, dtype, M):
    layer, x = _layer_case(dtype, M, version)
    y = layer(x)
    dy = torch.randn_like(y)
    y.backward(dy)

    w = layer.backbone_weight(dtype=dtype if version == 1 else torch.float32)

    def formula(cast):
        leaves = [t.detach().to(cast).requires_grad_() for t in (x, layer.lora_A, layer.lora_B, layer.beta, layer.bias)]
        xx, A, B, beta, bias = leaves
        out = beta * xx @ w.to(cast).T + layer.scaling * (xx @ A.T) @ B.T + bias
        out.backward(dy.to(cast))
        return out, [t.grad for t in leaves]
    want_y, want_g = formula(torch.float64)
    base_y, base_g = formula(dtype)
    tag = f"v{version} {dtype} M={M} ({dispatch.forward_regime(version, M, dtype, True)})"
    assert_close_to_baseline(y, base_y, want_y, dtype, f"y {tag}")
    got_g = [x.grad, layer.lora_A.grad, layer.lora_B.grad, layer.beta.grad, layer.bias.grad]
    for name, g, b, w_ in zip(["x", "A", "B", "beta", "bias"], got_g, base_g, want_g, strict=True):
        assert_close_to_baseline(g, b, w_, dtype, f"d{name} {tag}", summed_terms=y.numel() if name == "beta" else 1)


@pytest.mark.parametrize("M", [1, 16, 27, 100])  # 100: four 32-row launches (the regime forced past 32)
@pytest.mark.parametrize("rank", [2, 80, 130])
@pytest.mark.parametrize("separate_input", [False, True])
def test_gluon_decode_matches_its_twin(M, rank, separate_input):
    """Outputs and lora_x @ A^T, made by the kernel's extra programs (64 ranks each at 4 warps:
    80 and 130 ranks need two and three), reading x or a separate adapter input."""
    layer, x = _layer_case(torch.bfloat16, M, 2, K=4096, N=4096, rank=rank)
    x = x.detach()
    xl = torch.randn_like(x) if separate_input else None
    A = layer.lora_A.detach()
    kwargs = dict(seed=layer.seed, stream=layer.stream, out_features=4096, lora_A=A, lora_x=xl,
                  lora_B=layer.lora_B.detach(), beta=layer.beta.detach(), bias=layer.bias.detach(), scale=layer.scaling)
    fast, fast_xa = decode.decode_fwd(x, fast=True, **kwargs)
    twin, twin_xa = decode.decode_fwd(x, fast=False, **kwargs)
    # Same weights, same float32 partial sums in a different order: equal to bf16 rounding.
    assert torch.allclose(fast.float(), twin.float(), rtol=1e-2, atol=1e-2)
    want_xa = (xl if separate_input else x).double() @ A.double().T
    for name, xa in (("fast", fast_xa), ("twin", twin_xa)):
        assert xa.dtype == torch.bfloat16 and xa.shape == (M, rank)
        assert torch.allclose(xa.double(), want_xa, rtol=1e-2, atol=1e-2 * want_xa.abs().max().item()), name


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("M", [1, 16, 300])
def test_direct_launches_give_the_bits_of_tritons_own_launches(version, M, monkeypatch):
    """lottalora_kernels.launch reuses compiled kernels without Triton's launch path: outputs and
    gradients equal bit for bit to launches through Triton, for repeated calls (cached) and for a
    misaligned input (another key) between them."""
    from lottalora_kernels import launch

    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    layer, x = _layer_case(torch.bfloat16, M, version)
    flat = torch.randn(x.numel() + 1, device="cuda", dtype=torch.bfloat16)
    inputs = [x.detach(), flat[1:].view_as(x), x.detach()]  # the middle one starts 2 bytes past alignment
    dy = torch.randn(M, layer.out_features, device="cuda", dtype=torch.bfloat16)

    def run(direct):
        monkeypatch.setattr(launch, "_DIRECT", direct)
        results = []
        for _ in range(2):
            for inp in inputs:
                inp = inp.detach().requires_grad_()
                layer.zero_grad()
                y = layer(inp)
                y.backward(dy)
                results.append([y, inp.grad, layer.lora_A.grad, layer.lora_B.grad, layer.beta.grad])
        return results
    for got, want in zip(run(True), run(False), strict=True):
        for g, w_ in zip(got, want, strict=True):
            assert torch.equal(g, w_)


@pytest.mark.parametrize("regime", ["decode", "one_pass", "one_pass_block"])  # "decode": the default dispatch
@pytest.mark.parametrize("M", [1, 16, 300])                                    # (two-phase at 300)
def test_eager_plans_replay_the_full_paths_bits(regime, M, monkeypatch):
    """lottalora.ops.eager: a layer's repeated calls replay its first call's bound launches
    (compiled kernels launched directly); outputs and gradients equal bit for bit to the full
    path's (every call a first call), over fresh inputs, a misaligned one among them, with a
    gradient and without. "one_pass_block": a column-parallel rank's rows of the layer
    (``seeded_linear_shard``, a new block per call)."""
    from lottalora.ops import eager, seeded_linear_shard

    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    monkeypatch.setenv("LOTTALORA_ONE_PASS", "0" if regime == "decode" else "1")
    layer, _ = _layer_case(torch.bfloat16, M, 2)
    if regime == "one_pass_block":
        r0, r1 = 64, min(200, layer.out_features)

        def call(inp):
            return seeded_linear_shard(inp, layer.spec, (r0, r1), (0, layer.in_features), layer.lora_A,
                                       layer.lora_B[r0:r1], layer.beta, layer.bias[r0:r1], layer.scaling)
        out_features = r1 - r0
    else:
        call, out_features = layer, layer.out_features
    flat = torch.randn(M * 1000 + 1, device="cuda", dtype=torch.bfloat16)
    inputs = [torch.randn(M, 1000, device="cuda", dtype=torch.bfloat16), flat[1:].view(M, 1000),
              torch.randn(M, 1000, device="cuda", dtype=torch.bfloat16)]
    dy = torch.randn(M, out_features, device="cuda", dtype=torch.bfloat16)

    def run(replay):
        eager.clear()
        results = []
        for _ in range(3):
            for inp in inputs:
                if not replay:
                    eager.clear()
                leaf = inp.detach().requires_grad_()
                layer.zero_grad()
                y = call(leaf)
                y.backward(dy)
                with torch.no_grad():
                    y_inference = call(inp)
                results.append([y, y_inference, leaf.grad, layer.lora_A.grad, layer.lora_B.grad, layer.beta.grad])
        return results
    replayed = run(True)
    plans = [plan for plan in eager._PLANS.values() if plan is not eager.NO_PLAN]
    assert plans, "no eager plan was made: nothing was replayed"  # every v2 regime binds its launches
    full = run(False)
    for got, want in zip(replayed, full, strict=True):
        for g, w_ in zip(got, want, strict=True):
            assert torch.equal(g, w_)


@pytest.mark.parametrize("version", [1, 2])
def test_large_index_space_does_not_overflow(version):
    """Rows past 2^16 and an x with over 2^31 / K rows: offsets are int64."""
    K, N = 64, 70000
    layer = lottalora.Linear(K, N, rank=0, bias=False, seed=1, stream_version=version, device="cuda",
                             dtype=torch.bfloat16)
    x = torch.randn(40000, K, device="cuda", dtype=torch.bfloat16)  # y has 2.8e9 > 2^31 elements
    y = layer(x)
    rows = torch.tensor([0, 39999])
    want = (x[rows].double() @ layer.backbone_weight().double().T)
    assert torch.allclose(y[rows].double(), want, rtol=2e-2, atol=2e-2)


# The one-pass regime (one launch per op). Each distinct case compiles the Gluon kernel once
# (seconds each): the cases are few and chosen to cover the configs, both directions, both
# 16-bit dtypes, blocks with odd starts (x staged through registers instead of async copies),
# in-launch split-K and BLOCK_M 16 / 32 / 64.
ONE_PASS_READBACK = [  # (dtype, layer in_features, out_features, rows, cols, one-hot rows per call, config)
    (torch.bfloat16, 450, 750, (0, 750), (0, 450), 65, None),  # BLOCK_M 64, two row blocks of x
    (torch.bfloat16, 450, 750, (37, 700), (65, 400), 16, None),  # odd starts, BLOCK_M 16
    (torch.float16, 450, 750, (0, 750), (128, 450), 16, {"SPLIT_K": 3}),
    (torch.bfloat16, 450, 750, (600, 750), (0, 450), 64, None),  # BLOCK_M 64, the input gradient unsplit
]


@pytest.mark.parametrize("direction", ["fwd", "dx"])
@pytest.mark.parametrize("dtype,K,N,rows,cols,m,config", ONE_PASS_READBACK)
def test_one_pass_kernel_generates_the_reference_signs(direction, dtype, K, N, rows, cols, m, config):
    """One-hot inputs make every output one weight times beta * std: the Gluon kernel's own W
    (wgmma or mma.sync operand registers, inline PTX) read back bit for bit, as signs of equal
    magnitude, for a block of the layer's backbone."""
    from lottalora_kernels.seeded_linear.one_pass import one_pass_bwd_dx, one_pass_fwd

    s = lottalora.BackboneSpec(2**63 + 1, 5, K, N)
    want = backbone_signs(s, rows=rows, cols=cols, dtype=torch.float32)
    n, k = rows[1] - rows[0], cols[1] - cols[0]
    beta = torch.ones((), device="cuda")
    got = torch.empty(n, k)
    red = k if direction == "fwd" else n
    for r0 in range(0, red, m):
        r1 = min(r0 + m, red)
        hot = torch.zeros(r1 - r0, red, dtype=dtype, device="cuda")
        hot[torch.arange(r1 - r0), torch.arange(r0, r1)] = 1
        if direction == "fwd":
            y, _ = one_pass_fwd(hot, seed=s.seed, stream=s.stream, in_features=K, rows=rows, cols=cols, lora_A=None,
                                lora_B=None, beta=beta, bias=None, scale=0.0, fast=True, config=config)
            got[:, r0:r1] = y.float().T.cpu()
        else:
            dx, _ = one_pass_bwd_dx(hot, seed=s.seed, stream=s.stream, in_features=K, rows=rows, cols=cols, dy_b=None,
                                    lora_A=None, beta=beta, scale=0.0, fast=True, config=config)
            got[r0:r1] = dx.float().cpu()
    std = torch.tensor(s.std).to(dtype).float()  # beta * std rounded to the output dtype
    assert not gluon_failed(f"one_pass_{direction}"), "the Gluon kernel fell back to its twin"
    assert torch.equal(got.abs(), torch.full_like(got, std.item())), "a weight is not exactly +-std"
    assert torch.equal(torch.sign(got), want), f"{(torch.sign(got) != want).sum().item()} weights differ"


ONE_PASS_MATCH = [  # (dtype, M, rank, separate adapter input, cols, against the twin too)
    (torch.bfloat16, 17, 16, True, (128, 1152), True),  # BLOCK_M 32, split-K, rows staged by async copies
    (torch.float16, 300, 32, False, (128, 1090), False),  # BLOCK_M 32 (rank 32), ten row blocks, unaligned rows
]


@pytest.mark.parametrize("dtype,M,rank,separate,cols,twin", ONE_PASS_MATCH)
def test_one_pass_kernels_match_float64_and_the_twin(dtype, M, rank, separate, cols, twin):
    """Forward (y and xa, made in the same launch), input gradient and dbeta of the Gluon kernel
    against float64 on a block with odd starts, and (one case: each twin compile costs seconds)
    against the plain-Triton twin (same weights, float32 sums in another order: equal to the
    output's rounding)."""
    from lottalora_kernels.seeded_linear.one_pass import one_pass_bwd_dx, one_pass_fwd
    from tests.support.tolerances import assert_close, assert_dbeta_close

    K, N, rows = 1200, 900, (64, 890)
    s = lottalora.BackboneSpec(77, 2**40 + 3, K, N)
    w64 = lottalora.backbone_block(s, rows=rows, cols=cols).double()
    n, k = rows[1] - rows[0], cols[1] - cols[0]
    x = torch.randn(M, k, device="cuda", dtype=dtype)
    xl = torch.randn(M, k, device="cuda", dtype=dtype) if separate else None
    A = (torch.randn(rank, k, device="cuda") / k**0.5).to(dtype)
    B = (torch.randn(n, rank, device="cuda") * 0.1).to(dtype)
    bias = torch.randn(n, device="cuda", dtype=dtype)
    beta = torch.tensor(0.9, device="cuda")
    fwd = dict(seed=s.seed, stream=s.stream, in_features=K, rows=rows, cols=cols, lora_A=A, lora_B=B, beta=beta,
               bias=bias, scale=0.5, lora_x=xl)
    y, xa = one_pass_fwd(x, fast=True, **fwd)
    want_xa = (xl if separate else x).double().cpu() @ A.double().cpu().T
    assert_close(xa, want_xa, dtype, f"one-pass xa {dtype} M={M}")
    want = 0.9 * x.double().cpu() @ w64.T + 0.5 * xa.double().cpu() @ B.double().cpu().T + bias.double().cpu()
    assert_close(y, want, dtype, f"one-pass y {dtype} M={M}")
    dy = torch.randn(M, n, device="cuda", dtype=dtype)
    dy_b = dy @ B
    bwd = dict(seed=s.seed, stream=s.stream, in_features=K, rows=rows, cols=cols, dy_b=dy_b, lora_A=A, beta=beta,
               scale=0.5, x_for_dbeta=x)
    dx, dbeta = one_pass_bwd_dx(dy, fast=True, **bwd)
    want_dx = 0.9 * dy.double().cpu() @ w64 + 0.5 * dy_b.double().cpu() @ A.double().cpu()
    assert_close(dx, want_dx, dtype, f"one-pass dx {dtype} M={M}")
    assert_dbeta_close(dbeta, x, dy, w64, f"one-pass dbeta {dtype} M={M}")
    assert not gluon_failed("one_pass_fwd") and not gluon_failed("one_pass_dx"), "a Gluon kernel fell back"
    if twin:
        twin_y, twin_xa = one_pass_fwd(x, fast=False, **fwd)
        assert torch.allclose(y.float(), twin_y.float(), rtol=1e-2, atol=1e-2)
        assert torch.allclose(xa.float(), twin_xa.float(), rtol=1e-2, atol=1e-2)
        twin_dx, twin_dbeta = one_pass_bwd_dx(dy, fast=False, **bwd)
        assert torch.allclose(dx.float(), twin_dx.float(), rtol=1e-2, atol=1e-2)
        assert_dbeta_close(twin_dbeta, x, dy, w64, f"twin dbeta {dtype} M={M}")
