"""pytest-benchmark figures for the CPU path (the torch backend) against what it replaces.

Not part of the test command (tests/ holds the tests); run with
    python -m pytest benchmarks/test_cpu_reference.py --benchmark-only
or ``python -m benchmarks.cpu_reference``, which also measures peak memory and writes the ratios.
Each group pairs a seeded case with its baseline, measured in the same process.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lottalora

NK = 4096


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")


@pytest.mark.parametrize("version,init", [(1, "gaussian"), (2, "rademacher")])
@pytest.mark.parametrize("into", ["a new tensor", "an existing tensor"])
def test_backbone_generation(benchmark, version, init, into):
    """W_seed of a 4096 x 4096 layer, float32. Into a new tensor the OS's first touch of 64 MiB
    (page faults, ~25 ms here) is part of every call; into an existing one only generation is."""
    benchmark.group = f"generation 4096x4096 into {into}"
    spec = lottalora.BackboneSpec(0, 0, NK, NK, init, version)
    out = torch.empty(NK, NK) if into == "an existing tensor" else None
    benchmark(lottalora.backbone_block, spec, out=out)


@pytest.mark.parametrize("m", [1, 64])
@pytest.mark.parametrize("kind", ["nn.Linear", "seeded v2"])
def test_forward(benchmark, kind, m):
    benchmark.group = f"forward M={m} 4096x4096"
    layer = nn.Linear(NK, NK) if kind == "nn.Linear" else lottalora.Linear(NK, NK, rank=8)
    x = torch.randn(m, NK)
    with torch.no_grad():
        benchmark(layer, x)


class StoredBackbone(nn.Module):
    """A seeded layer with its backbone materialised once into a buffer: the paper's setting,
    and the baseline for what regenerating costs."""

    def __init__(self, layer: lottalora.Linear):
        super().__init__()
        self.register_buffer("weight", layer.backbone_weight())
        self.lora_A, self.lora_B, self.beta, self.bias = layer.lora_A, layer.lora_B, layer.beta, layer.bias
        self.scaling = layer.scaling

    def forward(self, x):
        return self.beta * F.linear(x, self.weight) + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B) \
            + self.bias


def mnist1d_mlp(stored: bool) -> nn.Module:
    """The MNIST-1D MLP of `lottalora demo --task mnist1d` (40-256-256-10, rank 8)."""
    model = nn.Sequential(lottalora.Linear(40, 256, rank=8, stream=0), nn.ReLU(),
                          lottalora.Linear(256, 256, rank=8, stream=1), nn.ReLU(), nn.Linear(256, 10))
    if stored:
        model[0], model[2] = StoredBackbone(model[0]), StoredBackbone(model[2])
    return model


@pytest.mark.benchmark(group="MNIST-1D MLP training step, rank 8, batch 250")
@pytest.mark.parametrize("kind", ["stored backbone", "seeded v2"])
def test_training_step(benchmark, kind):
    torch.manual_seed(0)
    model = mnist1d_mlp(stored=kind == "stored backbone")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(250, 40), torch.randint(0, 10, (250,))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    benchmark(step)
