"""lottalora.seeded_linear at its boundary: arguments refused by name."""

import numpy as np
import pytest
import torch

import lottalora
from lottalora.functional import seeded_linear

def _args(device="cpu", dtype=torch.float32):
    spec = lottalora.BackboneSpec(5, 1, 12, 10, init="gaussian")
    g = torch.Generator().manual_seed(0)
    t = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return dict(x=t(4, 12), spec=spec, lora_A=t(3, 12), lora_B=t(10, 3),
                beta=torch.tensor(0.75, device=device, dtype=dtype), bias=t(10), scale=0.5)


@pytest.mark.parametrize("change,error,match", [
    (dict(beta=0.5), TypeError, "beta must be a one-element torch.Tensor, got float"),
    (dict(beta=torch.tensor(1)), TypeError, "beta must be a floating-point tensor"),
    (dict(spec=(5, 1, 12, 10)), TypeError, "spec must be a lottalora.BackboneSpec, got tuple"),
    (dict(scale="big"), TypeError, "scale must be a real number, got str 'big'"),
    (dict(scale=True), TypeError, "scale must be a real number, got bool"),
    (dict(scale=float("nan")), ValueError, "scale must be finite"),
    (dict(scale=float("inf")), ValueError, "scale must be finite"),
    (dict(lora_A=np.zeros((3, 12), dtype=np.float32)), TypeError, "lora_A must be a torch.Tensor or None, got ndarray"),
    (dict(bias=[0.0] * 10), TypeError, "bias must be a torch.Tensor or None, got list"),
    (dict(x=torch.empty(4, 12, device="meta")), ValueError, "input is on the meta device.*materialize"),
    (dict(lora_B=torch.empty(10, 3, device="meta")), ValueError, "lora_B is on meta.*materialize"),
])
def test_bad_arguments_are_refused_by_name(change, error, match):
    args = {**_args(), **change}
    with pytest.raises(error, match=match):
        seeded_linear(**args)
