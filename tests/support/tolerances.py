"""One tolerance table and one verbose comparison, used by every numerical test."""

from __future__ import annotations

import torch

# (rtol, atol) for a kernel result in the given dtype against a float64 reference: about two
# output ulps plus the spread of fp32 accumulation over the small K used in tests.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """actual (any dtype) against a float64 ``expected`` with the tolerance of ``dtype``."""
    rtol, atol = TOLERANCES[dtype]
    actual64, expected64 = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual64.shape == expected64.shape, f"{what}: shape {actual64.shape} != {expected64.shape}"
    bad = ~torch.isclose(actual64, expected64, rtol=rtol, atol=atol)
    bad |= ~torch.isfinite(actual64)
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        err = (actual64 - expected64).abs()
        rows = [f"  at {i}: got {actual64[tuple(i)].item():.6g}, want {expected64[tuple(i)].item():.6g}" for i in idx]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements off (dtype {dtype}, rtol={rtol}, "
            f"atol={atol}, max abs err {err.nan_to_num(float('inf')).max().item():.3g})\n" + "\n".join(rows)
        )


# atol added to twice the baseline's error; about one output ulp near 1.
BASELINE_ATOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def assert_close_to_baseline(actual: torch.Tensor, baseline: torch.Tensor, expected: torch.Tensor,
                             dtype: torch.dtype, what: str = "", summed_terms: int = 1) -> None:
    """flash-attention's rule: |actual - expected| <= 2 |baseline - expected| + atol, in the max
    norm, where ``baseline`` is the same computation in plain PyTorch at ``dtype`` and
    ``expected`` is float64; plus the one rounding of the result to ``dtype`` that nothing can
    avoid (half an ulp of the largest value), which matters where the baseline rounds luckily
    (a scalar like dbeta of 6.33 in bf16 is 0.0156 from its neighbours). A value that is a sum of
    ``summed_terms`` float32 products in an order the baseline does not share (dbeta) also gets
    the random-walk error of that sum, sqrt(terms) half-ulps of float32."""
    expected64 = expected.detach().double().cpu()
    err = (actual.detach().double().cpu() - expected64).abs().max().item()
    base_err = (baseline.detach().double().cpu() - expected64).abs().max().item()
    rounding = expected64.abs().max().item() * torch.finfo(dtype).eps / 2
    rounding += expected64.abs().max().item() * torch.finfo(torch.float32).eps / 2 * (summed_terms - 1) ** 0.5
    limit = 2 * base_err + BASELINE_ATOL[dtype] + rounding
    assert err <= limit, (f"{what}: max error {err:.3g} exceeds 2 x PyTorch's {base_err:.3g} + "
                          f"{BASELINE_ATOL[dtype]:g} + the result's rounding {rounding:.3g} at {dtype}")


def assert_dbeta_close(dbeta: torch.Tensor, x: torch.Tensor, dy: torch.Tensor, w64: torch.Tensor,
                       what: str = "dbeta") -> None:
    """dbeta = <x, dy @ W> against float64, within float32's error for a sum of terms of that
    size: a relative bound on the total fails at random when the terms cancel. For the small
    shapes of the tests (the bound grows like sqrt(M N K) relative to dbeta: ~1% at M = 70,
    N = 50, K = 140, enough to catch a lost row or chunk, not a lost element)."""
    x64, dy64 = x.detach().double().cpu(), dy.detach().double().cpu()
    w64 = w64.detach().double().cpu()
    want = (x64 * (dy64 @ w64)).sum().item()
    size = (x64.abs() * (dy64.abs() @ w64.abs())).sum().item()
    err = abs(float(dbeta) - want)
    assert err <= 1e-5 * size + 1e-6, \
        f"{what}: got {float(dbeta):.8g}, want {want:.8g} (error {err:.3g}, size {size:.3g})"
