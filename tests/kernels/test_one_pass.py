"""The one-pass regime (stream v2, one launch per op): the plain-Triton twin, interpreted on the CPU,
against float64. The Gluon kernels are held to this twin, and their weights read back bit for
bit, on a GPU (tests/kernels/test_gpu.py); their instruction counts are gated by
tests/kernels/test_sm90_compile.py."""

import pytest
import torch

from lottalora import BackboneSpec, backbone_block
from lottalora_kernels.seeded_linear.one_pass import one_pass_bwd_dx, one_pass_fwd
from tests.support.tolerances import assert_close, assert_dbeta_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SEED, STREAM = 2**64 - 11, 2**40 + 3

# (M, layer in_features, layer out_features, rows, cols, rank, bias, separate adapter input):
# whole layers whose sizes are not multiples of a span (64 rows, 128 columns), and blocks that
# start inside a span (a tensor-parallel rank's rows or columns).
FORWARD_CASES = [
    (1, 45, 37, (0, 37), (0, 45), 3, True, False),
    (17, 300, 70, (0, 70), (0, 300), 16, False, True),
    (130, 131, 70, (0, 70), (0, 131), 0, True, False),
    (17, 400, 333, (37, 300), (129, 390), 3, True, False),
]
DX_CASES = [
    (1, 45, 37, (0, 37), (0, 45), 3),
    (130, 300, 70, (0, 70), (0, 300), 16),
    (17, 400, 333, (37, 300), (129, 390), 0),
]


def _block(K, N, rows, cols, device):
    s = BackboneSpec(SEED, STREAM, K, N)
    return s, backbone_block(s, rows=rows, cols=cols, device=device).double()


def _forward_inputs(M, rows, cols, R, bias, separate, dtype, device):
    n, k = rows[1] - rows[0], cols[1] - cols[0]
    x = torch.randn(M, k, device=device).to(dtype)
    xl = torch.randn(M, k, device=device).to(dtype) if separate else None
    A = (torch.randn(R, k, device=device) / k**0.5).to(dtype) if R else None
    B = torch.randn(n, R, device=device).to(dtype) if R else None
    b = torch.randn(n, device=device).to(dtype) if bias else None
    return x, xl, A, B, b


def _run_forward(s, K, rows, cols, x, xl, A, B, b, config=None):
    return one_pass_fwd(x, seed=s.seed, stream=s.stream, in_features=K, rows=rows, cols=cols, lora_A=A, lora_B=B,
                        beta=torch.tensor(0.8, device=x.device), bias=b, scale=0.5, lora_x=xl, fast=False,
                        config=config)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N,rows,cols,R,bias,separate", FORWARD_CASES)
def test_one_pass_forward_matches_float64(dtype, M, K, N, rows, cols, R, bias, separate, device):
    s, w64 = _block(K, N, rows, cols, device)
    x, xl, A, B, b = _forward_inputs(M, rows, cols, R, bias, separate, dtype, device)
    y, xa = _run_forward(s, K, rows, cols, x, xl, A, B, b)
    assert y.dtype == dtype and y.shape == (M, rows[1] - rows[0])
    want = 0.8 * x.double() @ w64.T
    tag = f"one-pass fwd {dtype} M={M} rows={rows} cols={cols} r={R}"
    if R:
        want_xa = (xl if separate else x).double() @ A.double().T
        assert xa.dtype == dtype and xa.shape == (M, R)
        assert_close(xa, want_xa, dtype, f"xa {tag}")
        want += 0.5 * xa.double() @ B.double().T  # the LoRA term uses xa as it is returned
    else:
        assert xa is None
    if bias:
        want += b.double()
    assert_close(y, want, dtype, tag)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N,rows,cols,R", DX_CASES)
def test_one_pass_input_gradient_and_dbeta_match_float64(dtype, M, K, N, rows, cols, R, device):
    s, w64 = _block(K, N, rows, cols, device)
    n, k = rows[1] - rows[0], cols[1] - cols[0]
    dy = torch.randn(M, n, device=device).to(dtype)
    x = torch.randn(M, k, device=device).to(dtype)
    A = (torch.randn(R, k, device=device) / k**0.5).to(dtype) if R else None
    dy_b = (dy @ torch.randn(n, R, device=device).to(dtype)) if R else None
    beta = torch.tensor(0.8, device=device)
    dx, dbeta = one_pass_bwd_dx(dy, seed=s.seed, stream=s.stream, in_features=K, rows=rows, cols=cols, dy_b=dy_b,
                                lora_A=A, beta=beta, scale=0.5, x_for_dbeta=x, fast=False)
    want = 0.8 * dy.double() @ w64
    if R:
        want += 0.5 * dy_b.double() @ A.double()
    assert dx.dtype == dtype and dx.shape == (M, k)
    assert_close(dx, want, dtype, f"one-pass dx {dtype} M={M} rows={rows} cols={cols} r={R}")
    assert dbeta.dtype == torch.float32 and dbeta.dim() == 0
    assert_dbeta_close(dbeta, x, dy, w64, f"one-pass dbeta {dtype} M={M}")
    only, dbeta_only = one_pass_bwd_dx(dy, seed=s.seed, stream=s.stream, in_features=K, rows=rows, cols=cols,
                                       dy_b=dy_b, lora_A=A, beta=beta, scale=0.5, x_for_dbeta=x, need_dx=False,
                                       fast=False)
    assert only is None and torch.equal(dbeta_only, dbeta)  # same tiles, same order: the same sums


@pytest.mark.parametrize("config", [{"SPLIT_K": 1}, {"SPLIT_K": 3, "BLOCK_M": 16}, {"num_warps": 2, "BLOCK_M": 32},
                                    {"num_warps": 1, "SPLIT_K": 4}, {"BLOCK_M": 64, "SPLIT_K": 1}])
def test_one_pass_does_not_depend_on_the_launch(config, device):
    """Tiles, warps and in-launch split-K (partials reduced by the last program of each tile, in
    split order) all give the layer's values; the tile counters are left zero for the next."""
    K, N, rows, cols = 700, 150, (3, 150), (65, 700)
    s, w64 = _block(K, N, rows, cols, device)
    x, xl, A, B, b = _forward_inputs(40, rows, cols, 5, True, False, torch.float32, device)
    for _ in range(2):  # the second launch reuses the counters the first left behind
        y, xa = _run_forward(s, K, rows, cols, x, xl, A, B, b, config=config)
        want = 0.8 * x.double() @ w64.T + 0.5 * xa.double() @ B.double().T + b.double()
        assert_close(y, want, torch.float32, f"one-pass fwd {config}")
        dy = torch.randn(40, rows[1] - rows[0], device=device)
        dx, dbeta = one_pass_bwd_dx(dy, seed=s.seed, stream=s.stream, in_features=K, rows=rows, cols=cols, dy_b=None,
                                    lora_A=None, beta=torch.tensor(1.5, device=device), scale=1.0, x_for_dbeta=x,
                                    fast=False, config=config)
        assert_close(dx, 1.5 * dy.double() @ w64, torch.float32, f"one-pass dx {config}")
        assert_dbeta_close(dbeta, x, dy, w64, f"one-pass dbeta {config}")
    from lottalora_kernels.seeded_linear import one_pass

    assert all(int(c.abs().sum()) == 0 for c in one_pass._COUNTERS.values())


def test_one_pass_is_deterministic(device):
    K, N = 500, 90
    s, _ = _block(K, N, (0, N), (0, K), device)
    x, xl, A, B, b = _forward_inputs(20, (0, N), (0, K), 4, True, False, torch.bfloat16, device)
    runs = [_run_forward(s, K, (0, N), (0, K), x, xl, A, B, b, config={"SPLIT_K": 4}) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_one_pass_of_an_empty_batch_is_empty(device):
    s, _ = _block(40, 30, (0, 30), (0, 40), device)
    x, xl, A, B, b = _forward_inputs(0, (0, 30), (0, 40), 2, True, False, torch.float32, device)
    y, xa = _run_forward(s, 40, (0, 30), (0, 40), x, xl, A, B, b)
    assert y.shape == (0, 30) and xa.shape == (0, 2)
    dx, dbeta = one_pass_bwd_dx(torch.zeros(0, 30, device=device), seed=s.seed, stream=s.stream, in_features=40,
                                rows=(0, 30), cols=(0, 40), dy_b=None, lora_A=None,
                                beta=torch.ones((), device=device), scale=1.0, x_for_dbeta=x)
    assert dx.shape == (0, 40) and float(dbeta) == 0.0


def test_one_pass_names_a_block_that_does_not_fit_its_tensor(device):
    s, _ = _block(40, 30, (0, 30), (0, 40), device)
    x = torch.randn(3, 40, device=device)
    with pytest.raises(ValueError, match="cols"):
        one_pass_fwd(x, seed=s.seed, stream=s.stream, in_features=40, rows=(0, 30), cols=(1, 40), lora_A=None,
                     lora_B=None, beta=torch.ones((), device=device), bias=None, scale=1.0)
    with pytest.raises(ValueError, match="rows"):
        one_pass_bwd_dx(torch.zeros(3, 30, device=device), seed=s.seed, stream=s.stream, in_features=40,
                        rows=(5, 2), cols=(0, 40), dy_b=None, lora_A=None, beta=torch.ones((), device=device),
                        scale=1.0)


def test_one_pass_names_a_config_or_fast_path_it_cannot_run(device):
    s, _ = _block(40, 30, (0, 30), (0, 40), device)
    x, xl, A, B, b = _forward_inputs(3, (0, 30), (0, 40), 2, False, False, torch.float32, device)
    for config, match in (({"BLOCK_N": 16}, "config keys"), ({"BLOCK_M": 48}, "BLOCK_M"), ({"SPLIT_K": 0}, "SPLIT_K")):
        with pytest.raises(ValueError, match=match):
            _run_forward(s, 40, (0, 30), (0, 40), x, xl, A, B, b, config=config)
    if device.type != "cuda":
        with pytest.raises(ValueError, match="fast=True needs CUDA"):
            one_pass_fwd(x, seed=s.seed, stream=s.stream, in_features=40, rows=(0, 30), cols=(0, 40), lora_A=A,
                         lora_B=B, beta=torch.ones((), device=device), bias=None, scale=1.0, fast=True)
