"""pytest-benchmark figures for the CPU path (the PyTorch reference) against nn.Linear.

Not part of the test command (tests/ holds the tests); run with
    python -m pytest benchmarks/test_cpu_reference.py --benchmark-only
"""

import pytest
import torch

import lottalora

SHAPES = [(1, 1024), (64, 1024), (64, 4096)]


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")


@pytest.mark.parametrize("m,nk", SHAPES)
def test_seeded_forward_cpu(benchmark, m, nk):
    layer = lottalora.Linear(nk, nk, rank=8)
    x = torch.randn(m, nk)
    with torch.no_grad():
        benchmark(layer, x)


@pytest.mark.parametrize("m,nk", SHAPES)
def test_stored_linear_forward_cpu(benchmark, m, nk):
    layer = torch.nn.Linear(nk, nk)
    x = torch.randn(m, nk)
    with torch.no_grad():
        benchmark(layer, x)


@pytest.mark.parametrize("nk", [1024, 4096])
def test_backbone_generation_cpu(benchmark, nk):
    spec = lottalora.BackboneSpec(0, 0, nk, nk)
    benchmark(lottalora.backbone_block, spec)
