"""The custom ops' registration: schema and fake implementations agree with the real ones,
and torch.compile runs a seeded layer."""

import pytest
import torch

import lottalora
from lottalora.backbone import BackboneBlock
from lottalora.ops import custom_ops, torch_backend
from lottalora.ops.custom_ops import (
    FAKE_CONTRACT,
    block_from_words,
    block_words,
    seeded_linear_bwd_dx_op,
    seeded_linear_fwd_op,
)

OPCHECKS = ("test_schema", "test_faketensor")


def _args(device, R=3, init="gaussian", version=1):
    s = lottalora.BackboneSpec(2**64 - 3, 7, 20, 18, init, version)
    x = torch.randn(5, 20, device=device)
    A, B = torch.randn(R, 20, device=device), torch.randn(18, R, device=device)
    return BackboneBlock.whole(s), x, A, B, torch.tensor(0.5, device=device), torch.randn(18, device=device)


def test_a_block_travels_through_the_schema_as_its_words():
    s = lottalora.BackboneSpec(2**64 - 1, 2**63 + 5, 300, 70, "uniform", 1)
    for block in (BackboneBlock.whole(s), BackboneBlock(s, (3, 9), (128, 257))):
        words = block_words(block)
        assert len(words) == 13 and all(isinstance(w, int) and 0 <= w < 2**32 for w in words)
        assert words[-1] == FAKE_CONTRACT and block_from_words(words) == block


def test_words_of_another_fake_contract_are_refused():
    """A graph compiled (and cached on disk) under other fakes carries another contract word:
    it fails by name instead of meeting outputs of shapes it did not expect."""
    words = block_words(BackboneBlock.whole(lottalora.BackboneSpec(1, 2, 24, 16)))
    with pytest.raises(ValueError, match="another lottalora version"):
        block_from_words(words[:-1] + [FAKE_CONTRACT - 1])
    with pytest.raises(ValueError, match="13 ints"):
        block_from_words(words[:-1])


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("keep", [True, False])
def test_forward_op_passes_opcheck(backend, keep, device):
    for init, version in (("gaussian", 1), ("uniform", 1), ("rademacher", 2)):
        block, x, A, B, beta, bias = _args(device, init=init, version=version)
        words = block_words(block)
        torch.library.opcheck(seeded_linear_fwd_op, (x, A, B, beta, bias, None, words, 0.5, backend, keep),
                              test_utils=OPCHECKS)
        torch.library.opcheck(seeded_linear_fwd_op, (x, None, None, beta, None, None, words, 1.0, backend, keep),
                              test_utils=OPCHECKS)
    torch.library.opcheck(seeded_linear_fwd_op, (x, A, B, beta, bias, torch.randn_like(x), words, 0.5, backend,
                                                 keep), test_utils=OPCHECKS)
    rows = BackboneBlock(block.spec, (2, 9), (5, 17))
    torch.library.opcheck(seeded_linear_fwd_op, (x[:, :12], A[:, :12], B[:7], beta, bias[:7], None,
                                                 block_words(rows), 0.5, backend, keep), test_utils=OPCHECKS)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("need_dx,with_x", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("version,init", [(1, "gaussian"), (2, "rademacher")])
def test_input_gradient_op_passes_opcheck(need_dx, with_x, version, init, backend, device):
    block, x, A, B, beta, _ = _args(device, init=init, version=version)
    dy = torch.randn(5, 18, device=device)
    torch.library.opcheck(seeded_linear_bwd_dx_op,
                          (dy, dy @ B, A, beta, x if with_x else None, None, block_words(block), 0.5, need_dx,
                           backend), test_utils=OPCHECKS)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_torch_compile_runs_the_layer(backend, monkeypatch, device):
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    torch._dynamo.reset()
    layer = lottalora.Linear(24, 16, rank=2, seed=3, device=device)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 24, device=device, requires_grad=True)
    eager = layer(x)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)(x)
    assert torch.allclose(compiled, eager)
    compiled.sum().backward()
    assert x.grad is not None and layer.beta.grad is not None


def test_torch_compile_default_backend_trains_with_lora_dropout(monkeypatch):
    """lora_dropout feeds the dropped input to the fused op (lora_input): Inductor compiles it
    whole, and gradients reach x through both the backbone and the adapter."""
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    torch._dynamo.reset()
    layer = lottalora.Linear(24, 16, rank=2, seed=3, lora_dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4, 24, requires_grad=True)
    compiled(x).sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (x, layer.lora_A, layer.lora_B, layer.beta))
    layer.eval()
    torch.testing.assert_close(compiled(x), layer(x))  # no dropout in eval: the compiled layer is the layer


@pytest.mark.parametrize("use_dora", [False, True])
def test_torch_compile_dynamic_shapes_compile_the_layer_whole(use_dora, monkeypatch):
    """``dynamic=True`` makes the layer's scaling a traced number: the scale check must not ask
    it for a bool (that was a graph break at every seeded layer, and fullgraph=True failed),
    and one graph serves every batch size."""
    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    torch._dynamo.reset()
    layer = lottalora.Linear(24, 16, rank=2, seed=3, use_dora=use_dora)
    with torch.no_grad():
        layer.lora_B.normal_()
    from torch._dynamo.testing import CompileCounterWithBackend

    frames = CompileCounterWithBackend("inductor")
    compiled = torch.compile(layer, backend=frames, fullgraph=True, dynamic=True)
    compiled_after_first = None
    for rows in (3, 5, 7):
        x = torch.randn(rows, 24, requires_grad=True)
        y = compiled(x)
        compiled_after_first = compiled_after_first or frames.frame_count
        torch.testing.assert_close(y, layer(x))
        (dx,) = torch.autograd.grad(y.square().sum(), x)
        torch.testing.assert_close(dx, torch.autograd.grad(layer(x).square().sum(), x)[0])
    assert frames.frame_count == compiled_after_first  # no recompile for another batch size


def test_torch_backend_forward_hands_its_packed_signs_to_the_backward():
    """Stream v2 on the torch backend: the backward reuses the forward's packed signs (1 bit per
    weight) and gives the gradients a fresh generation gives; they are kept only for training."""
    block = BackboneBlock.whole(lottalora.BackboneSpec(11, 12, 300, 70))
    words = block_words(block)
    x, dy, beta = torch.randn(9, 300), torch.randn(9, 70), torch.tensor(0.7)
    y, _, packed = seeded_linear_fwd_op(x, None, None, beta, None, None, words, 1.0, "torch", True)
    assert packed.dtype == torch.uint8 and packed.shape == (70, 38)  # the bytes of 300 columns
    assert torch.equal(packed, torch_backend.packed_signs(block, "cpu"))
    _, _, not_kept = seeded_linear_fwd_op(x, None, None, beta, None, None, words, 1.0, "torch", False)
    assert not_kept.numel() == 0
    reused = seeded_linear_bwd_dx_op(dy, None, None, beta, x, packed, words, 1.0, True, "torch")
    fresh = seeded_linear_bwd_dx_op(dy, None, None, beta, x, None, words, 1.0, True, "torch")
    assert torch.equal(reused[0], fresh[0]) and torch.equal(reused[1], fresh[1])
    torch.library.opcheck(seeded_linear_bwd_dx_op, (dy, None, None, beta, x, packed, words, 1.0, True, "torch"),
                          test_utils=OPCHECKS)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_eager_direct_call_equals_the_registered_op_bit_for_bit(backend, monkeypatch):
    """Eager layers call the ops' implementations directly (less dispatch); the registered op
    must give the same bits, forward and every gradient."""

    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    torch.manual_seed(0)
    layer = lottalora.Linear(37, 21, rank=3)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 37)

    def run():
        xx = x.clone().requires_grad_()
        y = layer(xx)
        y.backward(torch.ones_like(y))
        grads = [xx.grad] + [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad(set_to_none=True)
        return y.detach(), grads

    assert custom_ops.direct_call_ok(x, layer.lora_A, layer.beta)
    direct_y, direct_g = run()
    monkeypatch.setattr(custom_ops, "direct_call_ok", lambda *tensors: False)
    op_y, op_g = run()
    assert torch.equal(direct_y, op_y)
    for a, b in zip(direct_g, op_g, strict=True):
        assert torch.equal(a, b)


def test_direct_calls_are_refused_under_fake_tensors_and_compilation():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from lottalora.ops.custom_ops import direct_call_ok

    x = torch.randn(2, 3)
    assert direct_call_ok(x, None)
    with FakeTensorMode():
        assert not direct_call_ok(torch.empty(2, 3))
    assert not torch.compile(lambda t: t + direct_call_ok(t), backend="eager", fullgraph=True)(x).eq(x + 1).any()
