"""The decode regime (stream v2, M <= 16): the plain-Triton twin, interpreted on the CPU, against
a float64 computation. The Gluon fast path is held bit-equal to this twin on a GPU
(tests/kernels/test_gpu.py) and its instruction count is gated by tests/kernels/test_sm90_compile.py."""

import pytest
import torch

from lottalora import BackboneSpec, backbone_block
from lottalora_kernels.seeded_linear.decode import MAX_M, decode_bwd_dx, decode_fwd
from tests.support.tolerances import assert_close, assert_dbeta_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _case(M, K, N, R, dtype, device, bias=True):
    s = BackboneSpec(2**64 - 11, 2**40 + 3, K, N)
    x = torch.randn(M, K, device=device).to(dtype)
    A = (torch.randn(R, K, device=device) / K**0.5).to(dtype)
    B = torch.randn(N, R, device=device).to(dtype)
    b = torch.randn(N, device=device).to(dtype) if bias else None
    beta = torch.tensor(0.8, device=device)
    xa = x @ A.T if R else None  # in the input dtype: the LoRA term of nn.Linear-style layers
    want = 0.8 * x.double() @ backbone_block(s, device=device).double().T
    if R:
        want += 0.5 * xa.double() @ B.double().T
    if bias:
        want += b.double()
    return s, x, (A if R else None), (B if R else None), b, beta, want


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 45, 37), (7, 300, 70), (16, 129, 200), (29, 131, 70)])
@pytest.mark.parametrize("R", [0, 3, 6])
def test_decode_forward_matches_float64(dtype, M, K, N, R, device):
    """The kernel's x @ A^T programs (16 ranks each at one warp) serve R = 3 and 6; the launch
    test below uses 20 ranks for two of them."""
    s, x, A, B, b, beta, want = _case(M, K, N, R, dtype, device)
    y, xa = decode_fwd(x, seed=s.seed, stream=s.stream, out_features=N, lora_A=A, lora_B=B, beta=beta,
                              bias=b, scale=0.5, fast=False)
    assert y.dtype == dtype and y.shape == (M, N)
    assert_close(y, want, dtype, f"decode {dtype} {M}x{K}x{N} r={R}")
    if R:
        assert xa.dtype == dtype and xa.shape == (M, R)
        assert_close(xa, x.double() @ A.double().T, dtype, f"decode x @ A^T {dtype} r={R}")
    else:
        assert xa is None


@pytest.mark.parametrize("num_warps,split_k", [(1, 1), (1, 3), (2, 2), (2, 4)])
def test_decode_result_does_not_depend_on_the_launch(num_warps, split_k, device):
    # 20 ranks: two of the kernel's x @ A^T programs at one warp
    s, x, A, B, b, beta, want = _case(5, 512, 150, 20, torch.float32, device)
    y, xa = decode_fwd(x, seed=s.seed, stream=s.stream, out_features=150, lora_A=A, lora_B=B, beta=beta,
                              bias=b, scale=0.5, fast=False, num_warps=num_warps, split_k=split_k)
    assert_close(y, want, torch.float32, f"decode nw={num_warps} split={split_k}")
    assert_close(xa, x.double() @ A.double().T, torch.float32, f"x @ A^T nw={num_warps} split={split_k}")


def test_decode_accepts_a_strided_input(device):
    s, x, A, B, b, beta, want = _case(3, 200, 40, 2, torch.float32, device)
    wide = torch.zeros(200, 3, device=device).T.copy_(x)  # (3, 200) with strides (1, 3)
    a_t = torch.zeros(200, 2, device=device).T.copy_(A)  # lora_A with strides (1, 2)
    y, xa = decode_fwd(wide, seed=s.seed, stream=s.stream, out_features=40, lora_A=a_t, lora_B=B, beta=beta,
                              bias=b, scale=0.5, fast=False)
    assert_close(y, want, torch.float32, "strided input")
    assert_close(xa, x.double() @ A.double().T, torch.float32, "strided x @ A^T")


@pytest.mark.parametrize("M", [MAX_M + 1, 2 * MAX_M + 6])
def test_decode_past_32_rows_runs_in_row_chunks(M, device):
    """Past one launch's 32 rows the rows go in chunks (the speed benchmark times this against
    the two-phase regime): every chunk's rows, x @ A^T and dbeta are right."""
    s, x, A, B, b, beta, want = _case(M, 140, 50, 2, torch.float32, device)
    y, xa = decode_fwd(x, seed=s.seed, stream=s.stream, out_features=50, lora_A=A, lora_B=B, beta=beta,
                              bias=b, scale=0.5, fast=False)
    assert_close(y, want, torch.float32, f"chunked decode M={M}")
    assert_close(xa, x.double() @ A.double().T, torch.float32, f"chunked x @ A^T M={M}")
    dy = torch.randn(M, 50, device=device)
    dx, dbeta = decode_bwd_dx(dy, seed=s.seed, stream=s.stream, in_features=140, dy_b=dy @ B, lora_A=A,
                                     beta=beta, scale=0.5, x_for_dbeta=x, fast=False)
    w64 = backbone_block(s, device=device).double()
    assert_close(dx, 0.8 * dy.double() @ w64 + 0.5 * (dy @ B).double() @ A.double(), torch.float32,
                 f"chunked dx M={M}")
    assert_dbeta_close(dbeta, x, dy, w64, f"chunked dbeta M={M}")


def test_decode_of_an_empty_batch_is_empty(device):
    s, x, A, B, b, beta, _ = _case(1, 16, 8, 2, torch.float32, device)
    y, xa = decode_fwd(x[:0], seed=s.seed, stream=s.stream, out_features=8, lora_A=A, lora_B=B, beta=beta,
                              bias=b, scale=1.0)
    assert y.shape == (0, 8) and xa.shape == (0, 2)


def test_a_fast_path_that_does_not_compile_falls_back_to_its_twin_with_a_warning(monkeypatch):
    """A GPU's Triton whose Gluon API moved costs speed, never the run: the twin computes the
    same values (gluon.run_fast_path)."""
    from triton.compiler.errors import CompilationError

    from lottalora_kernels import gluon

    monkeypatch.setattr(gluon, "_GLUON_FAILURES", {})
    calls = []

    def broken():
        calls.append("fast")
        raise CompilationError("kernel.py", None, "layout mismatch")

    def twin():
        calls.append("twin")
        return "twin result"
    with pytest.warns(RuntimeWarning, match="plain-Triton twin"):
        assert gluon.run_fast_path("probe", broken, twin) == "twin result"
    assert gluon.run_fast_path("probe", broken, twin) == "twin result"  # no retry, no second warning
    assert calls == ["fast", "twin", "twin"] and gluon.gluon_failed("probe")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 45, 37), (7, 300, 70), (16, 129, 200), (29, 131, 70)])
@pytest.mark.parametrize("R", [0, 3])
def test_decode_input_gradient_and_dbeta_match_float64(dtype, M, K, N, R, device):
    s = BackboneSpec(2**63 + 7, 11, K, N)
    dy = torch.randn(M, N, device=device).to(dtype)
    x = torch.randn(M, K, device=device).to(dtype)
    A = (torch.randn(R, K, device=device) / K**0.5).to(dtype)
    B = torch.randn(N, R, device=device).to(dtype)
    dy_b = dy @ B if R else None
    beta = torch.tensor(0.8, device=device)
    dx, dbeta = decode_bwd_dx(dy, seed=s.seed, stream=s.stream, in_features=K, dy_b=dy_b,
                                     lora_A=A if R else None, beta=beta, scale=0.5, x_for_dbeta=x, fast=False)
    w64 = backbone_block(s, device=device).double()
    want = 0.8 * dy.double() @ w64
    if R:
        want += 0.5 * dy_b.double() @ A.double()
    assert dx.dtype == dtype and dx.shape == (M, K)
    assert_close(dx, want, dtype, f"decode dx {dtype} {M}x{K}x{N} r={R}")
    want_dbeta = (x.double() * (dy.double() @ w64)).sum()
    size = (x.double().abs() * (dy.double().abs() @ w64.abs())).sum()
    assert abs(dbeta.item() - want_dbeta.item()) <= 1e-5 * size.item() + 1e-6


@pytest.mark.parametrize("num_warps,split_k", [(1, 1), (1, 3), (2, 2)])
def test_decode_input_gradient_does_not_depend_on_the_launch(num_warps, split_k, device):
    s = BackboneSpec(5, 6, 300, 200)
    dy, x = torch.randn(4, 200, device=device), torch.randn(4, 300, device=device)
    beta = torch.tensor(1.5, device=device)
    dx, dbeta = decode_bwd_dx(dy, seed=5, stream=6, in_features=300, dy_b=None, lora_A=None, beta=beta,
                                     scale=1.0, x_for_dbeta=x, fast=False, num_warps=num_warps, split_k=split_k)
    w64 = backbone_block(s, device=device).double()
    assert_close(dx, 1.5 * dy.double() @ w64, torch.float32, f"dx nw={num_warps} split={split_k}")
    assert_dbeta_close(dbeta, x, dy, w64, f"dbeta nw={num_warps} split={split_k}")
    only_dbeta = decode_bwd_dx(dy, seed=5, stream=6, in_features=300, dy_b=None, lora_A=None, beta=beta,
                                      scale=1.0, x_for_dbeta=x, need_dx=False, fast=False, num_warps=num_warps,
                                      split_k=split_k)
    assert only_dbeta[0] is None and torch.equal(only_dbeta[1], dbeta)  # same launch: the same sums


def test_a_launch_runs_the_split_count_that_leaves_no_split_empty():
    """What benchmarks.decode_tuning labels a launch with is what _partial_products runs."""
    from lottalora_kernels.seeded_linear.decode import launch_splits

    assert launch_splits(64, 17) == (16, 4)  # N = K = 8192 on 132 SMs asks for 17
    assert launch_splits(32, 29) == (16, 2) and launch_splits(64, 15) == (13, 5) and launch_splits(5, 64) == (5, 1)
