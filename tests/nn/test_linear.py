"""lottalora.Linear: the pinned API, both backends against float64, state, and bad input."""

import math

import pytest
import torch

import lottalora
from lottalora.backbone import BackboneBlock
from lottalora.ops import torch_backend
from tests.support.tolerances import assert_close

BACKENDS = ["torch", "triton"]


def _formula64(layer: lottalora.Linear, x: torch.Tensor) -> torch.Tensor:
    """The float64 layer formula built from backbone_weight() rounded to the input dtype."""
    w = layer.backbone_weight(dtype=x.dtype).double()
    y = layer.beta.double() * x.double() @ w.T
    if layer.rank:
        y = y + layer.scaling * (x @ layer.lora_A.T).double() @ layer.lora_B.double().T
    if layer.bias is not None:
        y = y + layer.bias.double()
    return y


def _trained_like(layer: lottalora.Linear) -> lottalora.Linear:
    """Move off the init (B = 0, beta = 1) so every term of the formula is exercised."""
    with torch.no_grad():
        if layer.rank:
            layer.lora_B.normal_()
        layer.beta.fill_(0.625)
    return layer


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rank,bias", [(0, True), (4, False), (8, True)])
def test_layer_matches_the_float64_formula(backend, dtype, rank, bias, monkeypatch, device):
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    layer = _trained_like(lottalora.Linear(37, 29, bias=bias, rank=rank, seed=2**40 + 3, stream=9,
                                           device=device, dtype=dtype))
    x = torch.randn(3, 5, 37, device=device).to(dtype)
    y = layer(x)
    assert y.shape == (3, 5, 29) and y.dtype == dtype
    assert_close(y, _formula64(layer, x.reshape(-1, 37)).reshape(3, 5, 29), dtype, f"{backend} {dtype} r={rank}")


@pytest.mark.parametrize("init", ["uniform", "rademacher"])
def test_backends_agree_for_every_init(init, monkeypatch, device):
    layer = _trained_like(lottalora.Linear(21, 18, rank=2, init=init, seed=4, device=device))
    x = torch.randn(7, 21, device=device)
    outs = {}
    for backend in BACKENDS:
        monkeypatch.setenv("LOTTALORA_BACKEND", backend)
        outs[backend] = layer(x)
    assert_close(outs["triton"], outs["torch"].double(), torch.float32, "triton vs torch")
    assert_close(outs["torch"], _formula64(layer, x), torch.float32, "torch vs formula")


@pytest.mark.parametrize("version", [1, 2])
def test_column_blocked_torch_backend_equals_one_block(version, monkeypatch):
    spec = lottalora.BackboneSpec(3, 1, 300, 10, version=version)
    x = torch.randn(4, 300)
    beta = torch.tensor(1.5)
    block = BackboneBlock.whole(spec)
    whole, _ = torch_backend.seeded_linear_torch_fwd(x, block, None, None, beta, None, 1.0)
    monkeypatch.setattr(torch_backend, "V1_BLOCK_VALUES", 40)
    monkeypatch.setattr(torch_backend, "V2_BLOCK_VALUES", 40)
    assert len(list(torch_backend.column_ranges(block))) > 2
    blocked, _ = torch_backend.seeded_linear_torch_fwd(x, block, None, None, beta, None, 1.0)
    assert_close(blocked, whole.double(), torch.float32, "blocked torch backend")
    dx_whole, _ = torch_backend.seeded_linear_torch_bwd_dx(torch.ones(4, 10), block, None, None, beta, 1.0)
    assert_close(dx_whole, (1.5 * torch.ones(4, 10).double() @ lottalora.backbone_block(spec).double()),
                 torch.float32, "blocked dx")


def test_parameters_follow_the_pinned_api():
    layer = lottalora.Linear(64, 32, rank=4, alpha=8, seed=1)
    assert layer.lora_A.shape == (4, 64) and layer.lora_B.shape == (32, 4)
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(64)  # Kaiming-uniform with a = sqrt(5)
    assert layer.lora_A.abs().max().item() <= bound and layer.lora_A.std().item() > bound / 4
    assert layer.beta.shape == (1,) and layer.beta.item() == 1.0
    assert layer.bias.shape == (32,) and layer.bias.abs().max().item() <= bound
    assert layer.scaling == 2.0
    assert lottalora.Linear(64, 32, rank=4).scaling == 1.0
    assert lottalora.Linear(64, 32, rank=4, alpha=8, use_rslora=True).scaling == 4.0
    rank0 = lottalora.Linear(64, 32, rank=0, bias=False)
    assert rank0.lora_A is None and rank0.lora_B is None and rank0.bias is None
    assert [n for n, _ in rank0.named_parameters()] == ["beta"]


def test_no_out_by_in_tensor_is_held_anywhere():
    layer = lottalora.Linear(96, 80, rank=8)
    held = list(layer.parameters()) + list(layer.buffers()) + list(layer.state_dict().values())
    assert all(t.numel() < 96 * 80 for t in held)
    assert sum(p.numel() for p in layer.parameters()) == 8 * 96 + 80 * 8 + 1 + 80


def test_backbone_weight_is_regenerated_not_cached():
    layer = lottalora.Linear(16, 8)
    a, b = layer.backbone_weight(), layer.backbone_weight()
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    assert a.shape == (8, 16) and a.dtype == torch.float32
    assert torch.equal(layer.backbone_weight(dtype=torch.bfloat16), a.to(torch.bfloat16))


def test_state_dict_restores_seed_stream_and_init():
    src = _trained_like(lottalora.Linear(24, 12, rank=3, seed=2**64 - 1, stream=2**33 + 1, init="uniform"))
    dst = lottalora.Linear(24, 12, rank=3)
    dst.load_state_dict(src.state_dict())
    assert (dst.seed, dst.stream, dst.init) == (2**64 - 1, 2**33 + 1, "uniform")
    x = torch.randn(5, 24)
    assert torch.equal(dst(x), src(x))
    assert torch.equal(dst.backbone_weight(), src.backbone_weight())


def test_state_dict_survives_torch_save_with_weights_only(tmp_path):
    src = lottalora.Linear(8, 8, rank=2, seed=99, stream=7)
    torch.save(src.state_dict(), tmp_path / "sd.pt")
    dst = lottalora.Linear(8, 8, rank=2)
    dst.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    assert (dst.seed, dst.stream) == (99, 7)


def _snapshot(layer: lottalora.Linear) -> dict:
    """Everything a load could change: tensors (cloned) and the non-tensor state."""
    return {"tensors": {k: v.clone() for k, v in layer.state_dict().items()},
            "attrs": (layer.spec, layer.alpha, layer.use_rslora, layer.rank)}


def _assert_unchanged(layer: lottalora.Linear, before: dict) -> None:
    after = _snapshot(layer)
    assert after["attrs"] == before["attrs"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for k, v in before["tensors"].items():
        assert v.dtype == after["tensors"][k].dtype and torch.equal(v, after["tensors"][k]), k


def _source_and_destination():
    """A trained-looking source and a destination that differs from it in every tensor and in
    seed, stream, init and alpha, so that anything copied by a refused load shows."""
    src = _trained_like(lottalora.Linear(8, 8, rank=2, alpha=3.0, use_rslora=True, seed=5, stream=6, init="uniform"))
    dst = lottalora.Linear(8, 8, rank=2, seed=1, stream=2, init="gaussian")
    with torch.no_grad():
        for p in dst.parameters():
            p.uniform_(-2, 2)
    return src, dst


@pytest.mark.parametrize("mutate,match", [
    (lambda s: s.__setitem__(0, 3), "stream version 3"),
    (lambda s: s.__setitem__(5, 9), "unknown init"),
    (lambda s: s.__setitem__(6, 10), "backbone"),
    (lambda s: s.__setitem__(1, -1), "corrupt seed"),
    (lambda s: s.__setitem__(4, 2**32), "corrupt stream"),
    (lambda s: s.__setitem__(8, 7), "layout 7"),
    (lambda s: s.__setitem__(9, 3), "rank-3"),
    (lambda s: s.__setitem__(10, -1), "corrupt alpha"),  # the bits of a NaN
    (lambda s: s.__setitem__(11, 2), "use_rslora"),
])
def test_bad_extra_state_is_refused_and_the_layer_is_untouched(mutate, match):
    src, dst = _source_and_destination()
    sd = src.state_dict()
    mutate(sd["_extra_state"])
    before = _snapshot(dst)
    with pytest.raises(ValueError, match=match):
        dst.load_state_dict(sd)
    _assert_unchanged(dst, before)


@pytest.mark.parametrize("replace", [
    lambda s: s["_extra_state"].to(torch.int32), lambda s: s["_extra_state"][:7],
    lambda s: s["_extra_state"].float(), lambda s: [1, 2, 3],
])
def test_extra_state_of_the_wrong_dtype_or_length_is_refused(replace):
    src, dst = _source_and_destination()
    sd = src.state_dict()
    sd["_extra_state"] = replace(sd)
    before = _snapshot(dst)
    with pytest.raises(ValueError, match="extra state must be an int64 tensor of 8 .* or 12"):
        dst.load_state_dict(sd)
    _assert_unchanged(dst, before)


def test_state_dict_carries_alpha_and_rslora():
    src = _trained_like(lottalora.Linear(20, 12, rank=4, alpha=3.0, use_rslora=True, seed=7))
    dst = lottalora.Linear(20, 12, rank=4, alpha=64)
    dst.load_state_dict(src.state_dict())
    assert (dst.alpha, dst.use_rslora, dst.scaling) == (3.0, True, 1.5)
    x = torch.randn(5, 20)
    assert torch.equal(dst(x), src(x))


@pytest.mark.parametrize("dst_rank", [0, 2, 6])
def test_a_rank_mismatch_is_refused_before_anything_is_adopted(dst_rank):
    src = _trained_like(lottalora.Linear(8, 8, rank=4, alpha=2.0, seed=5, init="uniform"))
    dst = lottalora.Linear(8, 8, rank=dst_rank, seed=1)
    before = _snapshot(dst)
    with pytest.raises(ValueError, match="rank"):
        dst.load_state_dict(src.state_dict())
    with pytest.raises(ValueError, match="rank"):
        dst.load_state_dict(src.state_dict(), strict=False)
    _assert_unchanged(dst, before)


@pytest.mark.parametrize("name,value,match", [
    ("lora_A", lambda t: t.to(torch.int32), "lora_A must be a floating-point tensor, got torch.int32"),
    ("bias", lambda t: t.bool(), "bias must be a floating-point tensor"),
    ("beta", lambda t: torch.tensor([0.5, 7.0]), r"beta has shape \(2,\)"),
    ("lora_B", lambda t: t.T, r"lora_B has shape \(2, 8\)"),
    ("bias", lambda t: t.tolist(), "bias must be a floating-point tensor, got list"),
])
def test_tensors_of_the_wrong_kind_or_shape_are_refused_untouched(name, value, match):
    src, dst = _source_and_destination()
    sd = src.state_dict()
    sd[name] = value(sd[name])
    before = _snapshot(dst)
    with pytest.raises(ValueError, match=match):
        dst.load_state_dict(sd)
    _assert_unchanged(dst, before)


def test_a_one_element_beta_of_shape_1_still_loads():
    src, dst = _source_and_destination()
    sd = src.state_dict()
    sd["beta"] = sd["beta"].reshape(1)
    dst.load_state_dict(sd)
    assert dst.beta.item() == src.beta.item()


def test_missing_entries_follow_torch_strictness():
    src, dst = _source_and_destination()
    sd = src.state_dict()
    sd.pop("lora_B")
    with pytest.raises(RuntimeError, match="Missing key.*lora_B"):
        dst.load_state_dict(sd)
    dst.load_state_dict(sd, strict=False)  # non-strict: what is there loads
    assert torch.equal(dst.lora_A, src.lora_A) and (dst.seed, dst.alpha) == (src.seed, src.alpha)


def test_a_layer_inside_a_model_is_named_in_the_error():
    src = torch.nn.Sequential(torch.nn.Linear(8, 8), lottalora.Linear(8, 8, rank=2))
    sd = src.state_dict()
    sd["1._extra_state"][0] = 9
    with pytest.raises(ValueError, match="lottalora.Linear '1': backbone stream version 9"):
        torch.nn.Sequential(torch.nn.Linear(8, 8), lottalora.Linear(8, 8, rank=2)).load_state_dict(sd)


def test_the_8_value_extra_state_of_lottalora_0_1_still_loads():
    """Layout 1 carries no alpha: the layer keeps its own (tests/checkpoint/test_compat.py loads a real one)."""
    src = _trained_like(lottalora.Linear(8, 8, rank=2, alpha=3.0, seed=5, stream=6, init="uniform"))
    sd = src.state_dict()
    sd["_extra_state"] = sd["_extra_state"][:8].clone()
    dst = lottalora.Linear(8, 8, rank=2, alpha=3.0)
    dst.load_state_dict(sd)
    assert (dst.seed, dst.stream, dst.init, dst.alpha) == (5, 6, "uniform", 3.0)
    x = torch.randn(3, 8)
    assert torch.equal(dst(x), src(x))


def test_extra_repr_shows_the_backbone():
    text = repr(lottalora.Linear(8, 4, rank=2, seed=5, stream=6, init="rademacher"))
    for part in ("rank=2", "seed=5", "stream=6", "init='rademacher'", "in_features=8", "out_features=4"):
        assert part in text


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(rank=-1), ValueError, "rank"), (dict(rank=2.0), ValueError, "rank"),
    (dict(alpha=0), ValueError, "alpha"), (dict(alpha=float("nan")), ValueError, "alpha"),
    (dict(alpha=1e308), ValueError, "alpha"), (dict(alpha=True), ValueError, "alpha"),
    (dict(seed=-5), ValueError, "seed"), (dict(seed=2**64), ValueError, "seed"),
    (dict(init="xavier"), ValueError, "init"), (dict(dtype=torch.int32), TypeError, "dtype"),
])
def test_bad_constructor_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        lottalora.Linear(8, 4, **kwargs)


def test_bad_input_is_named():
    layer = lottalora.Linear(8, 4)
    with pytest.raises(ValueError, match="in_features=8"):
        layer(torch.randn(3, 7))
    with pytest.raises(ValueError, match="in_features=8"):
        layer(torch.tensor(1.0))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(3, 8, dtype=torch.float16))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.ones(3, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([1.0] * 8)


def test_unknown_backend_and_uninterpreted_cpu_triton_are_refused(monkeypatch):
    layer = lottalora.Linear(8, 4)
    monkeypatch.setenv("LOTTALORA_BACKEND", "cuda")
    with pytest.raises(ValueError, match="LOTTALORA_BACKEND"):
        layer(torch.randn(2, 8))
    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        layer(torch.randn(2, 8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_runs_in_the_autocast_dtype_and_trains_fp32_parameters(backend, monkeypatch, device):
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    layer = _trained_like(lottalora.Linear(24, 20, rank=4, seed=8, device=device))
    x = torch.randn(6, 24, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and layer.beta.grad is not None
    bf16 = torch.bfloat16
    with torch.no_grad():
        xb, A, B, bias = (t.to(bf16) for t in (x, layer.lora_A, layer.lora_B, layer.bias))
        want = (layer.beta.double() * xb.double() @ layer.backbone_weight(dtype=bf16).double().T
                + layer.scaling * (xb @ A.T).double() @ B.double().T + bias.double())
    assert_close(y, want, bf16, "autocast")
    assert layer.lora_A.dtype == torch.float32  # the parameters themselves are not cast


def test_backbone_weight_follows_the_backend(monkeypatch):
    layer = lottalora.Linear(12, 8, seed=4)
    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    via_triton = layer.backbone_weight()
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    assert torch.equal(via_triton, layer.backbone_weight())


@pytest.mark.parametrize("rank", [0, 3])
def test_frozen_beta_stays_exactly_at_its_value_and_gets_no_grad(rank):
    torch.manual_seed(0)
    layer = lottalora.Linear(10, 6, rank=rank, seed=2, train_beta=False)
    trained = lottalora.Linear(10, 6, rank=rank, seed=2)
    trained.load_state_dict(layer.state_dict())
    assert not layer.train_beta and not layer.beta.requires_grad and trained.train_beta
    assert "train_beta=False" in repr(layer) and "train_beta" not in repr(trained)
    x = torch.randn(5, 10)
    assert torch.equal(layer(x), trained(x))  # same forward: beta is 1.0 in both
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.5)  # every parameter, beta too
    for _ in range(3):
        loss = layer(x).square().mean()
        opt.zero_grad()
        loss.backward()
        assert layer.beta.grad is None and layer.bias.grad is not None
        opt.step()
    assert layer.beta.item() == 1.0
    with torch.no_grad():
        layer.beta.fill_(0.25)
    layer(x).sum().backward()
    assert layer.beta.grad is None and layer.beta.item() == 0.25


def test_train_beta_must_be_a_bool():
    with pytest.raises(TypeError, match="train_beta"):
        lottalora.Linear(4, 4, train_beta="no")


def test_beta_is_a_one_element_1d_parameter_and_a_0dim_beta_still_loads():
    # FSDP2 refuses 0-dim parameters; lottalora 0.1 wrote beta 0-dim (the checkpoint fixtures
    # in tests/fixtures/checkpoint_v1 still do, and test_stream_versions loads them).
    layer = lottalora.Linear(8, 4, rank=2, seed=3)
    assert layer.beta.shape == (1,) and layer.beta.dim() == 1
    state = layer.state_dict()
    state["beta"] = torch.tensor(0.5)
    fresh = lottalora.Linear(8, 4, rank=2, seed=9)
    fresh.load_state_dict(state)
    assert fresh.beta.shape == (1,) and fresh.beta.item() == 0.5 and fresh.seed == 3
    assert state["beta"].shape == ()  # the caller's dict is left as it was
    with pytest.raises(ValueError, match=r"beta has shape \(2,\) in the state_dict, this layer's is \(1,\)"):
        fresh.load_state_dict({**state, "beta": torch.ones(2)})
