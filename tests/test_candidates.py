"""Candidate stream-v2 generators (lottalora_kernels/candidates.py): bit-exact against their
NumPy definitions under the interpreter, and sound as distributions."""

import math

import numpy as np
import pytest
import torch

from lottalora_kernels.candidates import generate_candidate

from .numpy_stream import philox4x32_10


def numpy_candidate(variant, seed, stream, in_features, out_features, rounds):
    per_call = {"rademacher_bits": 128, "uniform16": 8}[variant]
    groups = (in_features + per_call - 1) // per_call
    g, o = np.meshgrid(np.arange(groups, dtype=np.uint64), np.arange(out_features, dtype=np.uint64))
    words = philox4x32_10((seed & 0xFFFFFFFF, seed >> 32),
                          (g, o, np.full_like(g, stream & 0xFFFFFFFF), np.full_like(g, stream >> 32)), rounds)
    words = np.stack(words, axis=-1)  # [out, groups, 4]
    std = np.float32(1.0 / math.sqrt(in_features))
    if variant == "rademacher_bits":
        bits = (words[..., None] >> np.arange(32, dtype=np.uint64)) & np.uint64(1)  # [out, groups, 4, 32]
        values = np.where(bits == 1, -std, std).astype(np.float32)
    else:
        halves = np.stack([words & np.uint64(0xFFFF), words >> np.uint64(16)], axis=-1)  # [out, groups, 4, 2]
        values = (halves.astype(np.int64) - 32768).astype(np.float32) * np.float32(std * np.float32(2.0**-15))
    return values.reshape(out_features, groups * per_call)[:, :in_features]


@pytest.mark.parametrize("variant", ["rademacher_bits", "uniform16"])
@pytest.mark.parametrize("rounds", [10, 7])
def test_candidate_matches_its_numpy_definition(variant, rounds):
    seed, stream = 2**64 - 11, 2**33 + 5
    got = generate_candidate(variant, seed, stream, 300, 37, rounds, "cpu")
    want = numpy_candidate(variant, seed, stream, 300, 37, rounds)
    assert np.array_equal(got.numpy().view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("variant", ["rademacher_bits", "uniform16"])
def test_candidate_statistics(variant):
    w = generate_candidate(variant, 3, 1, 1024, 256, 7, "cpu").double().flatten()
    n, std = w.numel(), 1 / 32
    assert abs(w.mean().item()) < 5 * std / math.sqrt(n)
    expected_std = std if variant == "rademacher_bits" else std / math.sqrt(3)
    assert w.std().item() == pytest.approx(expected_std, rel=5 / math.sqrt(n) + 1e-3)
    a, b = w.reshape(256, 1024)[:, :-1].flatten(), w.reshape(256, 1024)[:, 1:].flatten()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5 / math.sqrt(n)
