"""Eager plans (lottalora.ops.eager): a repeated seeded call replays its one-pass launch, gives what
the full path gives, and never serves a call keyed otherwise. Interpreted here, with the Triton
backend's one-pass regime switched on (LOTTALORA_ONE_PASS), where the plans form."""

import numpy as np
import pytest
import torch

import lottalora
from lottalora.backbone import BackboneSpec
from lottalora.ops import eager, seeded_linear, seeded_linear_ref
from lottalora_kernels.seeded_linear import one_pass
from tests.support.calls import count_calls
from tests.support.tolerances import assert_close

IN, OUT, RANK = 37, 29, 3
SPEC = BackboneSpec(5, 2, IN, OUT)


@pytest.fixture(autouse=True)
def one_pass_on(monkeypatch):
    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    monkeypatch.setenv("LOTTALORA_ONE_PASS", "1")
    eager.clear()
    yield
    eager.clear()


@pytest.fixture
def launches(monkeypatch):
    """The calls that went the full way to the one-pass launchers (a replay does not)."""
    return count_calls(monkeypatch, one_pass, ("one_pass_fwd", "one_pass_bwd_dx"))


def _params(gen, dtype, rank=RANK, bias=True, grad=True):
    a = torch.randn(rank, IN, generator=gen).to(dtype)
    b = torch.randn(OUT, rank, generator=gen).to(dtype)
    beta = torch.tensor([0.8], dtype=dtype)
    bias_t = torch.randn(OUT, generator=gen).to(dtype) if bias else None
    leaves = [t for t in (a, b, beta, bias_t) if t is not None]
    for t in leaves:
        t.requires_grad_(grad)
    return a, b, beta, bias_t


def _reference(x, a, b, beta, bias, scale, lora_input=None):
    """The float64 reference's output and its leaves (for gradients)."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None
              for t in (x, a, b, beta, bias, lora_input)]
    return seeded_linear_ref(leaves[0], SPEC, *leaves[1:5], scale, leaves[5]), leaves


def _plans():
    return [p for p in eager._PLANS.values() if p is not eager.NO_PLAN]


def _hold_replays_to_the_full_path_and_torch(monkeypatch, step, steps):
    """``step(*inputs)`` (float32 results) for each of ``steps``: from the second on, when the
    plan replays, equal bit for bit to the full path's results on the same inputs (the plans set
    aside for one call), and at every step to the torch backend's values."""
    for i, inputs in enumerate(steps):
        got = step(*inputs)
        if i:
            plans = eager._PLANS.copy()
            eager.clear()
            full = step(*inputs)
            eager._PLANS.clear()
            eager._PLANS.update(plans)
            for g, f in zip(got, full, strict=True):
                assert torch.equal(g, f), f"step {i}: a replay's bits are not the full path's"
        monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
        want = step(*inputs)
        monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
        for g, w in zip(got, want, strict=True):
            assert_close(g, w.double(), torch.float32, f"step {i}")


def _step(x, a, b, beta, bias, dy):
    y = seeded_linear(x, SPEC, a, b, beta, bias, 0.5)
    return (y, *torch.autograd.grad(y, (x, a, b, beta, bias), dy))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_repeated_calls_replay_one_plan_with_the_full_paths_bits(monkeypatch, launches, dtype):
    """Fresh inputs every step: the replays' y and gradients equal, bit for bit, what the full
    path (the call that makes a plan) gives on the same inputs, and the torch backend's values
    (float32: the float64 reference's)."""
    gen = torch.Generator().manual_seed(1)
    a, b, beta, bias = _params(gen, dtype)
    names = ["y", "dx", "dA", "dB", "dbeta", "dbias"]
    for step in range(3):
        x = torch.randn(2, 11, IN, generator=gen).to(dtype).requires_grad_()
        dy = torch.randn(2, 11, OUT, generator=gen).to(dtype)
        got = _step(x, a, b, beta, bias, dy)
        if step:
            plan = eager._PLANS.copy()
            eager.clear()
            full = _step(x, a, b, beta, bias, dy)  # makes a plan anew: Triton's own launch path
            eager._PLANS.clear()
            eager._PLANS.update(plan)
            for name, g, f in zip(names, got, full, strict=True):
                assert torch.equal(g, f), f"{name} at step {step}: the replay's bits are not the full path's"
        if dtype == torch.float32:
            want, leaves = _reference(x, a, b, beta, bias, 0.5)
            wanted = (want, *torch.autograd.grad(want, leaves[:5], dy.double()))
        else:
            monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
            wanted = [t.double() for t in _step(x, a, b, beta, bias, dy)]
            monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
        for name, g, w in zip(names, got, wanted, strict=True):
            assert_close(g, w, dtype, f"{name} at step {step}")
    assert launches == ["one_pass_fwd", "one_pass_bwd_dx"] * 3  # each step's first call; its replays none
    assert len(_plans()) == 1


def test_a_replayed_output_is_a_new_tensor_that_a_later_call_leaves_alone():
    gen = torch.Generator().manual_seed(2)
    a, b, beta, bias = _params(gen, torch.float32, grad=False)
    x1, x2, x3 = (torch.randn(6, IN, generator=gen) for _ in range(3))
    seeded_linear(x1, SPEC, a, b, beta, bias)  # makes the plan
    y2 = seeded_linear(x2, SPEC, a, b, beta, bias)
    kept = y2.clone()
    y3 = seeded_linear(x3, SPEC, a, b, beta, bias)
    assert y3.data_ptr() != y2.data_ptr()
    assert torch.equal(y2, kept)
    assert_close(y3, _reference(x3, a, b, beta, bias, 1.0)[0], torch.float32, "y3")


def test_a_replay_allocates_poisoned_outputs(monkeypatch):
    """A replay's outputs come from new_output (NaN under LOTTALORA_POISON_OUTPUTS), so an element
    its launch did not write shows: with the launch skipped, all of them do."""
    gen = torch.Generator().manual_seed(3)
    a, b, beta, bias = _params(gen, torch.float32, grad=False)
    x = torch.randn(4, IN, generator=gen)
    seeded_linear(x, SPEC, a, b, beta, bias)
    (plan,) = _plans()
    monkeypatch.setattr(plan.forward.replay, "bound", lambda *args: None)
    assert torch.isnan(seeded_linear(x, SPEC, a, b, beta, bias)).all()


def _call(x, a, b, beta, bias, scale=1.0, lora_input=None):
    return seeded_linear(x, SPEC, a, b, beta, bias, scale, lora_input)


def _variants(gen):
    """Calls that must each key apart from the first (and from one another)."""
    a, b, beta, bias = _params(gen, torch.float32, grad=False)
    x = torch.randn(5, IN, generator=gen)
    wide = torch.randn(5, IN + 1, generator=gen)
    a0, b0, _, _ = _params(gen, torch.float32, rank=0, grad=False)
    return {
        "first": lambda: _call(x, a, b, beta, bias),
        "misaligned x": lambda: _call(wide[:, 1:], a, b, beta, bias),
        "strided x": lambda: _call(torch.randn(IN, 5, generator=gen).T, a, b, beta, bias),
        "other rows": lambda: _call(x[:4], a, b, beta, bias),
        "3-D x": lambda: _call(x.reshape(1, 5, IN), a, b, beta, bias),
        "scale": lambda: _call(x, a, b, beta, bias, 0.25),
        "scale 0": lambda: _call(x, a, b, beta, bias, 0.0),
        "no bias": lambda: _call(x, a, b, beta, None),
        "rank 0": lambda: _call(x, a0, b0, beta, bias),
        "no adapter": lambda: _call(x, None, None, beta, bias),
        "lora_input": lambda: _call(x, a, b, beta, bias, lora_input=torch.randn(5, IN, generator=gen)),
        "lora_input is x": lambda: _call(x, a, b, beta, bias, lora_input=x),
        "x needs grad": lambda: _call(x.clone().requires_grad_(), a, b, beta, bias),
        "bf16": lambda: _call(x.bfloat16(), a.bfloat16(), b.bfloat16(), beta.bfloat16(), bias.bfloat16()),
    }


def test_every_difference_that_a_launch_depends_on_keys_a_call_apart():
    gen = torch.Generator().manual_seed(4)
    variants = _variants(gen)
    for name, call in variants.items():
        before = len(eager._PLANS)
        call()
        assert len(eager._PLANS) == before + 1, f"{name}: keyed like an earlier call"
        call()  # the same call again: its own key, not a new one
        assert len(eager._PLANS) == before + 1, f"{name}: not keyed alike when repeated"


def test_grad_mode_and_inference_mode_key_apart():
    gen = torch.Generator().manual_seed(5)
    a, b, beta, bias = _params(gen, torch.float32)
    x = torch.randn(3, IN, generator=gen)
    _call(x, a, b, beta, bias)
    with torch.no_grad():
        _call(x, a, b, beta, bias)
    with torch.inference_mode():
        y = _call(x, a, b, beta, bias)
    keys = list(eager._PLANS)
    assert len(keys) == 2 and keys[0] != keys[1]  # no_grad and inference_mode are both grad off
    assert not y.requires_grad
    assert _call(x, a, b, beta, bias).requires_grad  # the grad-mode plan runs its autograd node


@pytest.mark.parametrize("variant", ["scale", "scale 0", "misaligned x", "lora_input", "lora_input is x", "rank 0",
                                     "no bias", "3-D x", "strided x"])
def test_each_variant_replayed_matches_the_reference(variant):
    """A variant's second call (the replay) against the float64 reference."""
    gen = torch.Generator().manual_seed(6)
    a, b, beta, bias = _params(gen, torch.float32, grad=False)
    a0, b0, _, _ = _params(gen, torch.float32, rank=0, grad=False)
    calls = {
        "scale": lambda x: (x, a, b, beta, bias, 0.25, None),
        "scale 0": lambda x: (x, a, b, beta, bias, 0.0, None),
        "misaligned x": lambda x: (torch.cat([x[:, :1], x], 1)[:, 1:], a, b, beta, bias, 1.0, None),
        "lora_input": lambda x: (x, a, b, beta, bias, 1.0, torch.randn(x.shape, generator=gen)),
        "lora_input is x": lambda x: (x, a, b, beta, bias, 1.0, x),
        "rank 0": lambda x: (x, a0, b0, beta, bias, 1.0, None),
        "no bias": lambda x: (x, a, b, beta, None, 1.0, None),
        "3-D x": lambda x: (x.reshape(3, 3, IN), a, b, beta, bias, 1.0, None),
        "strided x": lambda x: (x.T.contiguous().T, a, b, beta, bias, 1.0, None),
    }
    for _ in range(2):
        args = calls[variant](torch.randn(9, IN, generator=gen))
        y = _call(*args)
        assert_close(y, _reference(*args)[0], torch.float32, variant)
    assert len(_plans()) == 1


def test_a_separate_lora_input_after_lora_input_as_x_is_not_served_by_its_plan():
    """The kernels read x once when lora_input is x: a later call with the same layouts but a
    lora_input of its own must get that input's adapter term."""
    gen = torch.Generator().manual_seed(7)
    a, b, beta, bias = _params(gen, torch.float32, grad=False)
    x = torch.randn(4, IN, generator=gen)
    _call(x, a, b, beta, bias, lora_input=x)
    other = torch.randn(4, IN, generator=gen)
    assert_close(_call(x, a, b, beta, bias, lora_input=other), _reference(x, a, b, beta, bias, 1.0, other)[0],
                 torch.float32, "y")


def test_the_settings_that_pick_the_path_are_read_at_every_call(monkeypatch, launches):
    gen = torch.Generator().manual_seed(8)
    a, b, beta, bias = _params(gen, torch.float32, grad=False)
    x = torch.randn(4, IN, generator=gen)
    _call(x, a, b, beta, bias)
    _call(x, a, b, beta, bias)
    assert launches == ["one_pass_fwd"]
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    _call(x, a, b, beta, bias)
    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    monkeypatch.setenv("LOTTALORA_ONE_PASS", "0")
    _call(x, a, b, beta, bias)
    assert launches == ["one_pass_fwd"]  # neither went through the one-pass plan
    assert len(_plans()) == 2  # the one-pass plan, and the decode regime's now that one-pass is off


def test_a_regime_whose_launcher_binds_nothing_is_not_keyed(monkeypatch):
    """Stream v1's one-pass regime (M <= 128 on a v1 layer) is not bound: its calls are not
    keyed (they pay no key) and take the full path; past it the same layer's calls make plans."""
    from lottalora.ops import seeded_linear_ref

    monkeypatch.setenv("LOTTALORA_ONE_PASS", "0")
    spec = BackboneSpec(5, 2, IN, OUT, version=1)
    gen = torch.Generator().manual_seed(9)
    a, b, beta, bias = _params(gen, torch.float32, grad=False)
    x = torch.randn(33, IN, generator=gen)
    for _ in range(2):
        y = seeded_linear(x, spec, a, b, beta, bias)
    assert not eager._PLANS
    want = seeded_linear_ref(x.double(), spec, a.double(), b.double(), beta.double(), bias.double())
    assert_close(y, want, torch.float32, "y")
    x = torch.randn(2, 65, IN, generator=gen)  # 130 rows: the two-phase regime, which binds
    for _ in range(2):
        y = seeded_linear(x, spec, a, b, beta, bias)
    assert len(_plans()) == 1
    want = seeded_linear_ref(x.double(), spec, a.double(), b.double(), beta.double(), bias.double())
    assert_close(y, want, torch.float32, "y")


def test_calls_the_plans_do_not_serve_are_not_keyed():
    gen = torch.Generator().manual_seed(10)
    a, b, beta, bias = _params(gen, torch.float32)
    x = torch.randn(4, IN, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _call(x, a, b, beta, bias)
    _call(x, a, b, beta, bias, 0.5)  # the control: keyed
    assert len(eager._PLANS) == 1
    eager.clear()
    torch.func.grad(lambda t: _call(t, a, b, beta, bias).sum())(x)
    torch.func.vmap(lambda t: _call(t, a, b, beta, bias))(x.reshape(2, 2, IN))
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        _call(fwAD.make_dual(x, torch.randn_like(x)), a, b, beta, bias)
    _call(x, a, b, beta, bias, scale=np.float32(0.5))  # a real number that is not a float or int
    _call(x.to("meta"), a.to("meta"), b.to("meta"), beta.to("meta"), bias.to("meta"))
    assert not eager._PLANS


def test_bad_input_after_a_plan_still_gets_the_checks_error():
    gen = torch.Generator().manual_seed(11)
    a, b, beta, bias = _params(gen, torch.float32, grad=False)
    x = torch.randn(4, IN, generator=gen)
    _call(x, a, b, beta, bias)
    with pytest.raises(ValueError, match="in_features"):
        _call(torch.randn(4, IN + 1), a, b, beta, bias)
    with pytest.raises((TypeError, ValueError), match="lora_A"):
        _call(x, a.double(), b, beta, bias)
    with pytest.raises(ValueError, match="bias"):
        _call(x, a, b, beta, torch.randn(OUT + 1))


def test_a_graph_building_backward_through_a_plan_matches_the_torch_backend(monkeypatch):
    gen = torch.Generator().manual_seed(12)
    a, b, beta, bias = _params(gen, torch.float32)
    x = torch.randn(5, IN, generator=gen, requires_grad=True)
    dy = torch.randn(5, OUT, generator=gen)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("LOTTALORA_BACKEND", backend)
        for _ in range(2):  # the second call is the triton plan's replay
            y = _call(x, a, b, beta, bias)
            (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
            results[backend] = torch.autograd.grad(dx.square().sum(), (a, beta))
    assert len(_plans()) == 1
    for name, g, want in zip(["dA", "dbeta"], results["triton"], results["torch"], strict=True):
        assert_close(g, want.double(), torch.float32, name)


def test_a_layer_trains_on_its_plan_as_on_the_torch_backend(monkeypatch):
    """Steps of a lottalora.Linear with dropout on the adapter's input: the Triton steps (plans
    from the second on) against the torch backend's from the same start."""
    torch.manual_seed(13)
    start = lottalora.Linear(IN, OUT, rank=RANK, seed=3, lora_dropout=0.1)
    with torch.no_grad():
        start.lora_B.normal_()
    xs = [torch.randn(2, 6, IN) for _ in range(3)]
    trained = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("LOTTALORA_BACKEND", backend)
        layer = lottalora.Linear(IN, OUT, rank=RANK, seed=3, lora_dropout=0.1)
        layer.load_state_dict(start.state_dict())
        opt = torch.optim.SGD(layer.parameters(), lr=0.05)
        torch.manual_seed(14)  # the same dropout masks
        for x in xs:
            opt.zero_grad()
            layer(x).square().mean().backward()
            opt.step()
        trained[backend] = layer.state_dict()
    assert len(_plans()) == 1
    for name, want in trained["torch"].items():
        if want.is_floating_point():
            assert_close(trained["triton"][name], want.double(), torch.float32, name)


def test_a_saved_tensor_hook_that_copies_x_gets_the_input_gradient_of_the_copy():
    """save_on_cpu and offloading hooks give the backward a contiguous copy of a strided or
    misaligned x: its input-gradient launch must not be a replay bound to the other layout."""
    gen = torch.Generator().manual_seed(15)
    a, b, beta, bias = _params(gen, torch.float32)
    big = torch.randn(8, IN + 11, generator=gen)
    dy = torch.randn(8, OUT, generator=gen)
    for x in (big[:, :IN], big[:, 1:IN + 1]):  # strided, then misaligned too
        eager.clear()
        for hooked in (False, True, False):
            leaf = x.detach().requires_grad_()
            copy = (lambda t: t.clone(), lambda t: t) if hooked else (lambda t: t, lambda t: t)
            with torch.autograd.graph.saved_tensors_hooks(*copy):
                y = _call(leaf, a, b, beta, bias, 0.5)
            grads = torch.autograd.grad(y, (leaf, a, beta), dy)
            want, leaves = _reference(leaf, a, b, beta, bias, 0.5)
            wanted = torch.autograd.grad(want, (leaves[0], leaves[1], leaves[3]), dy.double())
            for name, g, w in zip(["dx", "dA", "dbeta"], grads, wanted, strict=True):
                assert_close(g, w, torch.float32, f"{name}, hooked={hooked}")


def test_a_backward_under_a_dispatch_mode_goes_through_the_registered_op():
    """A forward replayed eagerly, its backward under a dispatch mode (a FLOP counter, compiled
    autograd's tracing): the mode sees the input-gradient op, as on the full path."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(16)
    a, b, beta, bias = _params(gen, torch.float32)
    x = torch.randn(4, IN, generator=gen, requires_grad=True)
    for _ in range(2):
        y = _call(x, a, b, beta, bias)
    assert len(_plans()) == 1
    with Seen() as seen:
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert any("lottalora" in op for op in seen.ops), seen.ops
    want, leaves = _reference(x, a, b, beta, bias, 1.0)
    assert_close(dx, torch.autograd.grad(want, leaves[0], torch.ones_like(want))[0], torch.float32, "dx")


def test_a_fake_trace_leaves_eager_backwards_working():
    """make_fx with fake tensors runs the backward's addmm on fake tensors; nothing it makes may be
    kept for later eager calls."""
    from torch.fx.experimental.proxy_tensor import make_fx

    gen = torch.Generator().manual_seed(17)
    a, b, beta, bias = _params(gen, torch.float32)
    x = torch.randn(4, IN, generator=gen)

    def step(x, a, b, beta, bias):
        return torch.autograd.grad(_call(x, a, b, beta, bias, 0.5).sum(), (a, b))

    make_fx(step, tracing_mode="fake")(x, a, b, beta, bias)
    got = step(x, a, b, beta, bias)
    want, leaves = _reference(x, a, b, beta, bias, 0.5)
    for g, w in zip(got, torch.autograd.grad(want.sum(), (leaves[1], leaves[2])), strict=True):
        assert_close(g, w, torch.float32, "dA, dB")


@pytest.mark.parametrize("rows, cols", [((3, 20), (0, IN)), ((0, OUT), (5, 30)), ((0, OUT), (0, IN))])
def test_tensor_parallel_blocks_replay_their_one_pass_launches(monkeypatch, launches, rows, cols):
    """A rank's block (a new BackboneBlock at every call, as seeded_linear_shard makes it) is keyed
    by its layer's spec and ranges: a column-parallel rank's rows, a row-parallel rank's columns
    (and a one-rank block, the whole layer) replay their launches with the full path's bits and
    the torch backend's values, forward and every gradient."""
    from lottalora.ops import seeded_linear_shard

    gen = torch.Generator().manual_seed(18)
    n_out, n_in = rows[1] - rows[0], cols[1] - cols[0]
    a, b = torch.randn(RANK, n_in, generator=gen), torch.randn(n_out, RANK, generator=gen)
    beta, bias = torch.tensor([0.8]), torch.randn(n_out, generator=gen)
    leaves = [t.requires_grad_() for t in (a, b, beta, bias)]

    def step(x, dy):
        leaf = x.clone().requires_grad_()
        y = seeded_linear_shard(leaf, SPEC, rows, cols, a, b, beta, bias, 0.5)
        return (y, *torch.autograd.grad(y, [leaf, *leaves], dy))
    steps = [(torch.randn(2, 5, n_in, generator=gen), torch.randn(2, 5, n_out, generator=gen)) for _ in range(3)]
    _hold_replays_to_the_full_path_and_torch(monkeypatch, step, steps)
    assert launches == ["one_pass_fwd", "one_pass_bwd_dx"] * 3  # each step's first call only
    (plan,) = _plans()
    assert (plan.block.rows, plan.block.cols) == (rows, cols) and len(plan.input_grads) == 1


def test_two_blocks_of_one_layer_key_apart_and_blocks_outside_the_one_pass_regime_are_not_keyed(monkeypatch,
                                                                                                 launches):
    from lottalora.ops import seeded_linear_shard

    gen = torch.Generator().manual_seed(19)
    a, b, beta, bias = _params(gen, torch.float32, grad=False)
    x = torch.randn(4, IN, generator=gen)
    halves = [(0, 14), (14, OUT)]
    for _ in range(2):
        ys = [seeded_linear_shard(x, SPEC, r, (0, IN), a, b[r[0]:r[1]], beta, bias[r[0]:r[1]], 0.5) for r in halves]
    assert torch.equal(torch.cat(ys, -1), seeded_linear(x, SPEC, a, b, beta, bias, 0.5))
    assert launches == ["one_pass_fwd"] * 3 and len(_plans()) == 3  # two halves, then the whole layer
    eager.clear()
    monkeypatch.setenv("LOTTALORA_ONE_PASS", "0")  # a block then goes through the generator's chunks
    for _ in range(2):
        y = seeded_linear_shard(x, SPEC, halves[1], (0, IN), a, b[14:], beta, bias[14:], 0.5)
    torch.testing.assert_close(y, ys[1], rtol=1e-5, atol=1e-5)  # another accumulation order
    assert not eager._PLANS  # not keyed: nothing to replay, so no key to pay for
    monkeypatch.setenv("LOTTALORA_ONE_PASS", "1")  # on again: the block's first call makes a plan
    seeded_linear_shard(x, SPEC, halves[1], (0, IN), a, b[14:], beta, bias[14:], 0.5)
    assert len(_plans()) == 1


def test_float32_matmul_precision_keys_apart():
    """The one-pass launch takes float32's tensor-core precision as a constexpr."""
    gen = torch.Generator().manual_seed(19)
    a, b, beta, bias = _params(gen, torch.float32, grad=False)
    x = torch.randn(4, IN, generator=gen)
    saved = torch.get_float32_matmul_precision()
    try:
        for precision in ("highest", "high", "highest"):
            torch.set_float32_matmul_precision(precision)
            _call(x, a, b, beta, bias)
    finally:
        torch.set_float32_matmul_precision(saved)
    assert len(_plans()) == 2


@pytest.fixture
def decode_launches(monkeypatch):
    """Calls that went the full way to the decode forward's launcher (a replay does not)."""
    from lottalora_kernels.seeded_linear import decode

    monkeypatch.setenv("LOTTALORA_ONE_PASS", "0")
    return count_calls(monkeypatch, decode, ("decode_fwd",))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,variant", [(1, "lora"), (7, "rank 0"), (32, "no bias"), (5, "lora_input"),
                                       (3, "no adapter")])
def test_decode_forwards_replay_two_launches_with_the_full_paths_bits(monkeypatch, decode_launches, dtype, m,
                                                                       variant):
    """The decode regime (one-pass off, M <= 32): a forward's two launches (partial products
    with x @ A^T, then the epilogue) replayed on fresh inputs give the full path's bits, and the
    float64 reference's values (bf16: the torch backend's)."""
    gen = torch.Generator().manual_seed(20)
    a, b, beta, bias = _params(gen, dtype, rank=0 if variant == "rank 0" else RANK, bias=variant != "no bias",
                               grad=False)
    if variant == "no adapter":
        a = b = None
    for step in range(3):
        x = torch.randn(m, IN, generator=gen).to(dtype)
        lora_input = torch.randn(m, IN, generator=gen).to(dtype) if variant == "lora_input" else None
        got = _call(x, a, b, beta, bias, 0.5, lora_input)
        if step:
            plans = eager._PLANS.copy()
            eager.clear()
            full = _call(x, a, b, beta, bias, 0.5, lora_input)
            eager._PLANS.clear()
            eager._PLANS.update(plans)
            assert torch.equal(got, full), f"step {step}: the replay's bits are not the full path's"
        if dtype == torch.float32:
            want = _reference(x, a, b, beta, bias, 0.5, lora_input)[0]
        else:
            monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
            want = _call(x, a, b, beta, bias, 0.5, lora_input).double()
            monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
        assert_close(got, want, dtype, f"y at step {step}")
    assert decode_launches == ["decode_fwd"] * 3  # each step's first call; its replays none
    assert len(_plans()) == 1


@pytest.mark.parametrize("variant", ["lora", "rank 0", "lora_input", "frozen x", "frozen beta"])
def test_decode_training_steps_replay_both_directions_with_the_full_paths_bits(monkeypatch, variant):
    """The decode regime's forward and input gradient (partial products, then the epilogue with
    dbeta's partials) replayed: y and every gradient equal, bit for bit, to the full path's on
    the same inputs, and to the torch backend's values."""
    from lottalora_kernels.seeded_linear import decode

    monkeypatch.setenv("LOTTALORA_ONE_PASS", "0")
    calls = count_calls(monkeypatch, decode, ("decode_fwd", "decode_bwd_dx"))
    gen = torch.Generator().manual_seed(21)
    a, b, beta, bias = _params(gen, torch.float32, rank=0 if variant == "rank 0" else RANK)
    beta.requires_grad_(variant != "frozen beta")
    leaves = [t for t in (a, b, beta, bias) if t.requires_grad]

    def step(x, dy, lora_input):
        leaf = x.clone().requires_grad_(variant != "frozen x")
        y = _call(leaf, a, b, beta, bias, 0.5, lora_input)
        wrt = ([leaf] if leaf.requires_grad else []) + leaves + ([lora_input] if lora_input is not None else [])
        return (y, *torch.autograd.grad(y, wrt, dy))
    steps = [(torch.randn(2, 3, IN, generator=gen), torch.randn(2, 3, OUT, generator=gen),
              torch.randn(2, 3, IN, generator=gen).requires_grad_() if variant == "lora_input" else None)
             for _ in range(3)]
    _hold_replays_to_the_full_path_and_torch(monkeypatch, step, steps)
    assert calls == ["decode_fwd", "decode_bwd_dx"] * 3  # each step's first call only
    (plan,) = _plans()
    assert len(plan.input_grads) == 1


@pytest.mark.parametrize("version,m,chunked,variant", [
    (2, 33, False, "lora"), (2, 40, True, "lora"), (2, 33, True, "rank 0"), (2, 34, True, "lora_input"),
    (2, 35, True, "frozen x"), (1, 130, True, "lora"),
])
def test_two_phase_steps_replay_their_chunks_with_the_full_paths_bits(monkeypatch, version, m, chunked, variant):
    """The two-phase regime (M past the decode regime, one-pass off; stream v1 past its one-pass
    regime): each chunk's generator and epilogue launches replayed around cuBLAS's GEMM, W in
    one chunk or several (a small CHUNK_BYTES), forward and input gradient: y and every
    gradient equal, bit for bit, to the full path's, and to the torch backend's values."""
    from lottalora_kernels.seeded_linear import two_phase

    monkeypatch.setenv("LOTTALORA_ONE_PASS", "0")
    n_in, n_out = 300, 150
    if chunked:  # 64-row chunks of W in the forward, 128-column chunks in the input gradient
        monkeypatch.setattr(two_phase, "CHUNK_BYTES", 64 * n_in * 4)
    calls = count_calls(monkeypatch, two_phase, ("two_phase_fwd", "two_phase_bwd_dx"))
    spec = BackboneSpec(5, 2, n_in, n_out, version=version)
    gen = torch.Generator().manual_seed(24)
    rank = 0 if variant == "rank 0" else RANK
    a, b = torch.randn(rank, n_in, generator=gen), torch.randn(n_out, rank, generator=gen)
    beta, bias = torch.tensor([0.8]), torch.randn(n_out, generator=gen)
    leaves = [t.requires_grad_() for t in (a, b, beta, bias)]

    def step(x, dy, lora_input):
        leaf = x.clone().requires_grad_(variant != "frozen x")
        y = seeded_linear(leaf, spec, a, b, beta, bias, 0.5, lora_input)
        wrt = ([leaf] if leaf.requires_grad else []) + leaves + ([lora_input] if lora_input is not None else [])
        return (y, *torch.autograd.grad(y, wrt, dy))
    steps = [(torch.randn(m, n_in, generator=gen), torch.randn(m, n_out, generator=gen),
              torch.randn(m, n_in, generator=gen).requires_grad_() if variant == "lora_input" else None)
             for _ in range(3)]
    _hold_replays_to_the_full_path_and_torch(monkeypatch, step, steps)
    assert calls == ["two_phase_fwd", "two_phase_bwd_dx"] * 3  # each step's first call only
    (plan,) = _plans()
    rows = two_phase.chunk_rows(n_out, n_in, 4, 64, m)
    assert len(plan.forward.replay.chunks) == -(-n_out // rows) and (rows < n_out) == chunked


def test_a_strided_bias_is_not_keyed():
    gen = torch.Generator().manual_seed(22)
    a, b, beta, _ = _params(gen, torch.float32, grad=False)
    bias = torch.randn(2 * OUT, generator=gen)[::2]
    x = torch.randn(4, IN, generator=gen)
    for _ in range(2):
        y = _call(x, a, b, beta, bias)
    assert not eager._PLANS
    assert_close(y, _reference(x, a, b, beta, bias, 1.0)[0], torch.float32, "y")


def test_a_full_table_drops_its_oldest_keys(monkeypatch):
    monkeypatch.setattr(eager, "_MAX_PLANS", 8)
    gen = torch.Generator().manual_seed(23)
    a, b, beta, bias = _params(gen, torch.float32, grad=False)
    xs = [torch.randn(m, IN, generator=gen) for m in range(1, 10)]
    for x in xs:
        _call(x, a, b, beta, bias)
    rows = [key[5][0][0][0] for key in eager._PLANS]  # x's rows, in insertion order
    assert rows == [3, 4, 5, 6, 7, 8, 9]  # 8 keys reached: the oldest quarter (2) went, then 9 came


def test_the_regime_thresholds_key_apart(monkeypatch):
    """Moving a threshold (benchmarks do) sends a shape to another regime: not to a plan made for
    the old one. A v1 layer at 40 rows: the one-pass v1 regime (not keyed), then two-phase (a
    plan), then the one-pass v1 regime again (its launcher, not the plan)."""
    from lottalora_kernels.seeded_linear import dispatch, one_pass_v1

    monkeypatch.setenv("LOTTALORA_ONE_PASS", "0")
    calls = count_calls(monkeypatch, one_pass_v1, ("one_pass_v1_fwd",))
    spec = BackboneSpec(5, 2, IN, OUT, version=1)
    gen = torch.Generator().manual_seed(25)
    a, b, beta, bias = _params(gen, torch.float32, grad=False)
    x = torch.randn(40, IN, generator=gen)
    seeded_linear(x, spec, a, b, beta, bias)
    assert not eager._PLANS
    monkeypatch.setattr(dispatch, "V1_ONE_PASS_MAX_M", 32)
    for _ in range(2):
        seeded_linear(x, spec, a, b, beta, bias)
    assert len(eager._PLANS) == 1 and len(_plans()) == 1
    monkeypatch.setattr(dispatch, "V1_ONE_PASS_MAX_M", 128)
    seeded_linear(x, spec, a, b, beta, bias)
    assert calls == ["one_pass_v1_fwd"] * 2
