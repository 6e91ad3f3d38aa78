"""The fused seeded matmul kernel (interpreted on CPU) against a float64 computation."""

import pytest
import torch

from lottalora import BackboneSpec, backbone_block
from lottalora_kernels.seeded_linear.one_pass_v1 import INTERPRETER_CONFIG, one_pass_v1_bwd_dx, one_pass_v1_fwd
from tests.support.tolerances import assert_close, assert_dbeta_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (M, K, N): odd sizes that straddle the interpreter config's blocks (16, 32, 32).
SHAPES = [(1, 45, 37), (19, 77, 33), (33, 4, 70)]
OTHER_CONFIG = {"BLOCK_M": 32, "BLOCK_P": 16, "BLOCK_Q": 64, "GROUP_M": 1}


def _inputs(M, K, N, R, dtype, device, init="gaussian", seed=77, stream=5):
    s = BackboneSpec(seed, stream, K, N, init, version=1)  # the one-pass kernel serves stream v1
    x = torch.randn(M, K, device=device).to(dtype)
    A = (torch.randn(R, K, device=device) / K**0.5).to(dtype)
    B = torch.randn(N, R, device=device).to(dtype)
    bias = torch.randn(N, device=device).to(dtype)
    beta = torch.tensor(0.75, device=device)
    w64 = backbone_block(s, device=device).to(dtype).double()  # W as the kernel sees it
    return s, x, A, B, bias, beta, w64


def _forward(s, x, A, B, bias, beta, scale, config=None):
    xa = x @ A.T if A.shape[0] > 0 else None
    return one_pass_v1_fwd(x, seed=s.seed, stream=s.stream, out_features=s.out_features, init=s.init,
                             xa=xa, lora_B=B if xa is not None else None, beta=beta, bias=bias,
                             scale=scale, config=config)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("R", [0, 3])
def test_forward_matches_float64(dtype, M, K, N, R, device):
    s, x, A, B, bias, beta, w64 = _inputs(M, K, N, R, dtype, device)
    y = _forward(s, x, A, B, bias, beta, scale=0.5)
    assert y.dtype == dtype and y.shape == (M, N)
    xa = (x @ A.T).double() if R else torch.zeros(M, 0, dtype=torch.float64, device=device)
    want = 0.75 * x.double() @ w64.T + 0.5 * xa @ B.double().T + bias.double()
    assert_close(y, want, dtype, f"forward {dtype} {M}x{K}x{N} r={R}")


@pytest.mark.parametrize("init", ["uniform", "rademacher"])
@pytest.mark.parametrize("R", [1, 130])
def test_forward_other_inits_and_ranks_past_one_block(init, R, device):
    s, x, A, B, bias, beta, w64 = _inputs(17, 40, 21, R, torch.float32, device, init=init)
    y = _forward(s, x, A, B, None, beta, scale=2.0)
    want = 0.75 * x.double() @ w64.T + 2.0 * (x @ A.T).double() @ B.double().T
    assert_close(y, want, torch.float32, f"forward {init} r={R}")


def test_forward_is_independent_of_block_config(device):
    s, x, A, B, bias, beta, _ = _inputs(37, 69, 45, 4, torch.float32, device)
    a = _forward(s, x, A, B, bias, beta, 1.0, config=INTERPRETER_CONFIG)
    b = _forward(s, x, A, B, bias, beta, 1.0, config=OTHER_CONFIG)
    assert_close(a, b.double(), torch.float32, "two block configs")


def test_forward_accepts_strided_input(device):
    s, x, A, B, bias, beta, w64 = _inputs(9, 30, 20, 2, torch.float32, device)
    wide = torch.randn(30, 9, device=device).T  # (9, 30), non-contiguous
    y = _forward(s, wide, A, B, bias, beta, 1.0)
    want = 0.75 * wide.double() @ w64.T + (wide @ A.T).double() @ B.double().T + bias.double()
    assert_close(y, want, torch.float32, "strided input")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("R", [0, 5])
def test_input_gradient_and_dbeta_match_float64(dtype, M, K, N, R, device):
    s, x, A, B, _, beta, w64 = _inputs(M, K, N, R, dtype, device)
    dy = torch.randn(M, N, device=device).to(dtype)
    dy_b = dy @ B if R else None
    dx, dbeta = one_pass_v1_bwd_dx(dy, seed=s.seed, stream=s.stream, in_features=K, init=s.init,
                                     dy_b=dy_b, lora_A=A if R else None, beta=beta, scale=0.5,
                                     x_for_dbeta=x)
    want_dx = 0.75 * dy.double() @ w64
    if R:
        want_dx += 0.5 * dy_b.double() @ A.double()
    assert_close(dx, want_dx, dtype, f"dx {dtype} {M}x{K}x{N} r={R}")
    want_dbeta = (x.double() * (dy.double() @ w64)).sum()
    scale = (x.double().abs() @ w64.abs().T * dy.double().abs()).sum()  # size of the sum's terms
    assert abs(dbeta.item() - want_dbeta.item()) <= 1e-5 * scale.item() + 1e-6


def test_dbeta_alone_skips_dx(device):
    s, x, A, B, _, beta, w64 = _inputs(18, 36, 35, 0, torch.float32, device)
    dy = torch.randn(18, 35, device=device)
    dx, dbeta = one_pass_v1_bwd_dx(dy, seed=s.seed, stream=s.stream, in_features=36, init=s.init,
                                     dy_b=None, lora_A=None, beta=beta, scale=1.0, x_for_dbeta=x,
                                     need_dx=False, config=OTHER_CONFIG)
    assert dx is None
    assert_dbeta_close(dbeta, x, dy, w64)


def test_empty_batch_returns_empty_outputs(device):
    s, x, A, B, bias, beta, _ = _inputs(1, 8, 8, 2, torch.float32, device)
    y = _forward(s, x[:0], A, B, bias, beta, 1.0)
    assert y.shape == (0, 8)


def test_outputs_are_poisoned_in_tests_so_unwritten_elements_show():
    from lottalora_kernels.allocation import new_output

    assert torch.isnan(new_output((3, 4), torch.bfloat16, "cpu")).all()


def test_block_configs_respect_the_kernel_invariants():
    """dbeta cells are 16 x 16 output blocks and tiles start on the generator's 4-column groups."""
    from lottalora_kernels.seeded_linear.one_pass_v1 import AUTOTUNE_CONFIGS

    for kw in [c.kwargs for c in AUTOTUNE_CONFIGS] + [INTERPRETER_CONFIG, OTHER_CONFIG]:
        assert kw["BLOCK_M"] % 16 == 0 and kw["BLOCK_P"] % 16 == 0 and kw["BLOCK_Q"] % 16 == 0
