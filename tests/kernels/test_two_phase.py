"""The two-phase regime (a chunk of W generated once, then a GEMM) and the regime dispatch,
interpreted on the CPU against float64, for both stream versions."""

import pytest
import torch

from lottalora import BackboneSpec, backbone_block
from lottalora_kernels.seeded_linear import dispatch, two_phase
from tests.support.tolerances import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SPECS = [(1, "gaussian"), (2, "rademacher")]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few hundred bytes, so every test crosses several of them and a ragged last one."""
    monkeypatch.setattr(two_phase, "CHUNK_BYTES", 64 * 1024)


def _inputs(M, K, N, R, dtype, device, version, init):
    s = BackboneSpec(31337, 4, K, N, init, version)
    x = torch.randn(M, K, device=device).to(dtype)
    A = (torch.randn(R, K, device=device) / K**0.5).to(dtype)
    B = torch.randn(N, R, device=device).to(dtype)
    bias = torch.randn(N, device=device).to(dtype)
    w64 = backbone_block(s, device=device).to(dtype).double()  # what the kernels multiply by
    return s, x, A, B, bias, torch.tensor(1.25, device=device), w64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("version,init", SPECS)
@pytest.mark.parametrize("M,K,N,R", [(17, 300, 200, 3), (40, 129, 70, 0)])
def test_two_phase_forward_matches_float64(dtype, version, init, M, K, N, R, small_chunks, device):
    s, x, A, B, bias, beta, w64 = _inputs(M, K, N, R, dtype, device, version, init)
    xa = x @ A.T if R else None
    y = two_phase.two_phase_fwd(x, seed=s.seed, stream=s.stream, version=version, init=init,
                                       out_features=N, xa=xa, lora_B=B if R else None, beta=beta, bias=bias,
                                       scale=0.5)
    want = 1.25 * x.double() @ w64.T + bias.double()
    if R:
        want += 0.5 * xa.double() @ B.double().T
    assert_close(y, want, dtype, f"two-phase forward v{version} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("version,init", SPECS)
@pytest.mark.parametrize("need_dx", [True, False])
def test_two_phase_input_gradient_and_dbeta_match_float64(dtype, version, init, need_dx, small_chunks, device):
    M, K, N, R = 23, 300, 150, 4
    s, x, A, B, _, beta, w64 = _inputs(M, K, N, R, dtype, device, version, init)
    dy = torch.randn(M, N, device=device).to(dtype)
    dy_b = dy @ B
    dx, dbeta = two_phase.two_phase_bwd_dx(dy, seed=s.seed, stream=s.stream, version=version, init=init,
                                                  in_features=K, dy_b=dy_b, lora_A=A, beta=beta, scale=0.5,
                                                  x_for_dbeta=x, need_dx=need_dx)
    if need_dx:
        want = 1.25 * dy.double() @ w64 + 0.5 * dy_b.double() @ A.double()
        assert_close(dx, want, dtype, f"two-phase dx v{version} {dtype}")
    else:
        assert dx is None
    want_dbeta = (x.double() * (dy.double() @ w64)).sum()
    size = (x.double().abs() * (dy.double().abs() @ w64.abs())).sum()
    assert abs(dbeta.item() - want_dbeta.item()) <= 1e-5 * size.item() + 1e-6


def test_chunks_grow_with_the_activation_up_to_the_caps(monkeypatch, device):
    """A chunk of W takes CHUNK_BYTES, or as much as the input it multiplies up to
    MAX_CHUNK_BYTES while its float32 product fits MAX_PRODUCT_BYTES (fewer launches at large M,
    bounded memory); every chunking gives the float64 answer."""
    monkeypatch.setattr(two_phase, "CHUNK_BYTES", 16 * 1024)
    monkeypatch.setattr(two_phase, "MAX_CHUNK_BYTES", 64 * 1024)
    monkeypatch.setattr(two_phase, "MAX_PRODUCT_BYTES", 128 * 1024)
    generated = []
    real_generate = two_phase._generate

    def counting_generate(buf, **kwargs):
        generated.append(kwargs["rows"])
        real_generate(buf, **kwargs)
    monkeypatch.setattr(two_phase, "_generate", counting_generate)
    K, N = 128, 256  # W: 128 KiB in float32, 512 bytes a row
    # x of 4 KiB: 16 KiB chunks; 64 KiB: 64 KiB chunks; 256 KiB: the product (512 x rows x 4)
    # caps a chunk at 64 rows.
    for M, chunks in ((8, 4), (128, 2), (512, 4)):
        s, x, _, _, bias, beta, w64 = _inputs(M, K, N, 0, torch.float32, device, 2, "rademacher")
        generated.clear()
        y = two_phase.two_phase_fwd(x, seed=s.seed, stream=s.stream, version=2, init="rademacher",
                                           out_features=N, xa=None, lora_B=None, beta=beta, bias=bias, scale=1.0)
        assert len(generated) == chunks, (M, generated)
        assert_close(y, 1.25 * x.double() @ w64.T + bias.double(), torch.float32, f"two-phase forward M={M}")


def test_chunk_rows_at_gpu_sizes():
    """N = K = 4096 bf16: two chunks up to M = 2048, one from 4096; a wide layer at long
    sequences stops growing where the float32 product reaches MAX_PRODUCT_BYTES, and the
    16 MiB rule still holds where it gives more."""
    rows = two_phase.chunk_rows
    assert [rows(4096, 4096, 2, 64, m) for m in (64, 2048, 4096, 8192)] == [2048, 2048, 4096, 4096]
    assert rows(14336, 4096, 2, 64, 16384) == 4096  # 256 MiB of float32 product
    assert rows(14336, 4096, 2, 64, 65536) == 2048  # CHUNK_BYTES' rows


def test_regimes_follow_the_documented_thresholds():
    assert dispatch.forward_regime(2, 1) == dispatch.forward_regime(2, dispatch.DECODE_MAX_M) == "decode"
    assert dispatch.forward_regime(2, dispatch.DECODE_MAX_M + 1) == "two_phase"
    assert dispatch.input_grad_regime(2, 1) == "decode"
    assert dispatch.input_grad_regime(2, dispatch.DECODE_MAX_M + 1) == "two_phase"
    assert dispatch.forward_regime(1, dispatch.V1_ONE_PASS_MAX_M) == "one_pass_v1"
    assert dispatch.forward_regime(1, dispatch.V1_ONE_PASS_MAX_M + 1) == "two_phase"
    # float32 on a GPU: cuBLAS (TF32 per torch's setting) through the two-phase path, any M
    assert dispatch.forward_regime(2, 1, torch.float32, on_gpu=True) == "two_phase"
    assert dispatch.forward_regime(2, 1, torch.bfloat16, on_gpu=True) == "decode"
    assert dispatch.forward_regime(1, 1, torch.float32, on_gpu=True) == "two_phase"


@pytest.mark.parametrize("regime", ["decode", "one_pass", "two_phase"])
def test_dispatch_runs_each_v2_regime_to_the_same_result(regime, device):
    s, x, A, B, bias, beta, w64 = _inputs(9, 200, 70, 2, torch.float32, device, 2, "rademacher")
    y, xa = dispatch.seeded_linear_fwd(x, seed=s.seed, stream=s.stream, version=2, init="rademacher",
                                       out_features=70, lora_A=A, lora_B=B, beta=beta, bias=bias, scale=0.5,
                                       regime=regime)
    assert_close(xa, x.double() @ A.double().T, torch.float32, f"xa {regime}")
    want = 1.25 * x.double() @ w64.T + 0.5 * (x @ A.T).double() @ B.double().T + bias.double()
    assert_close(y, want, torch.float32, f"regime {regime}")


def test_epilogue_tiles_fill_the_gpu_at_decode_sizes_and_stay_wide_at_large_m():
    from lottalora_kernels.seeded_linear.epilogue import tile_shape

    assert tile_shape(8192, 4096, 132) == (32, 128)
    bm, bn = tile_shape(16, 4096, 132)
    assert -(-16 // bm) * -(-4096 // bn) >= 264 and bn >= 32
    assert tile_shape(1, 37, 132) == (1, 32)  # cannot fill: the smallest tile, still valid
    assert tile_shape(7, 300, None) == (8, 32)


def test_host_ceil_division_matches_triton():
    """Launchers use plain-Python cdiv / next_power_of_2 (triton's are constexpr functions with
    microseconds of call overhead); they must agree with Triton's."""
    import triton

    from lottalora_kernels.runtime import cdiv, next_power_of_2

    for a in range(1, 600, 7):
        for b in (1, 3, 16, 128, 1000):
            assert cdiv(a, b) == triton.cdiv(a, b)
        assert next_power_of_2(a) == triton.next_power_of_2(a)
