"""Column- and row-parallel seeded layers on 2 CPU ranks (gloo): each rank regenerates only its
block of W_seed, the adapters are sharded to match, and forward and backward equal the unsharded
layers to fp32 rounding. The functions starting with _ run on every rank (tests/distributed/launch.py)."""

import copy

import pytest
import torch
from torch import nn

import lottalora
from tests.distributed.launch import run_ranks

pytest.importorskip("torch.distributed.tensor.parallel")


class MLP(nn.Module):
    """up (column-parallel) -> relu -> down (row-parallel), odd sizes so the shards are uneven
    (``hidden=1`` leaves the second rank an empty block of each layer)."""

    def __init__(self, rank, version, bias, seed, hidden=51):
        super().__init__()
        init = "gaussian" if version == 1 else None
        self.up = lottalora.Linear(37, hidden, bias=bias, rank=rank, seed=seed, stream=1, init=init)
        self.down = lottalora.Linear(hidden, 37, bias=bias, rank=rank, seed=seed, stream=2, init=init)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _moved_off_init(model):
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in (model.up, model.down):
            layer.beta.fill_(0.9)
            if layer.lora_B is not None:
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.3)
    return model


def _full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _tp_mlp_equals_the_unsharded_one(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from lottalora.distributed import ColwiseParallel, RowwiseParallel
    from lottalora.ops import torch_backend

    mesh = init_device_mesh("cpu", (world,))
    generated = []
    real_block, real_packed = torch_backend.stream_block, torch_backend.packed_signs

    def counting_block(spec, rows, cols, dtype, device, signs):  # stream v1: one column range at a time
        generated.append((spec.stream, rows, cols))
        return real_block(spec, rows, cols, dtype, device, signs)

    def counting_packed(block, device):  # stream v2: the whole block's signs, packed
        generated.append((block.spec.stream, block.rows, block.cols))
        return real_packed(block, device)

    torch_backend.stream_block, torch_backend.packed_signs = counting_block, counting_packed
    for layer_rank in (0, 3):
        for version in (1, 2):
            for bias in (True, False):
                torch.manual_seed(0)
                ref = _moved_off_init(MLP(layer_rank, version, bias, seed=42))
                tp = copy.deepcopy(ref)
                parallelize_module(tp, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
                rows = ((0, 26), (26, 51))[rank]
                assert tp.up.shard == (rows, (0, 37)) and tp.down.shard == ((0, 37), rows)
                assert "shard=rows" in repr(tp.up)
                x = torch.randn(3, 5, 37, requires_grad=True)
                x_ref = x.detach().clone().requires_grad_()
                dy = torch.randn(3, 5, 37)
                generated.clear()
                y = tp(x)
                y.backward(dy)
                # Only this rank's rows of up and columns of down were generated: in the forward
                # and again in the backward for stream v1; once for v2, whose packed signs the
                # forward hands to the backward.
                assert {(s, r, c[0] >= 0 and c[1] <= 37) for s, r, c in generated if s == 1} == {(1, rows, True)}
                assert {r for s, r, c in generated if s == 2} == {(0, 37)}
                assert all(rows[0] <= c[0] and c[1] <= rows[1] for s, r, c in generated if s == 2)
                assert sum((r[1] - r[0]) * (c[1] - c[0]) for _, r, c in generated) == \
                    (2 if version == 1 else 1) * (rows[1] - rows[0]) * (37 + 37)
                y_ref = ref(x_ref)
                y_ref.backward(dy)
                what = f"rank {layer_rank} v{version} bias {bias}"
                torch.testing.assert_close(y, y_ref, rtol=2e-5, atol=2e-5, msg=what)
                torch.testing.assert_close(x.grad, x_ref.grad, rtol=2e-5, atol=2e-5, msg=what)
                for (name, p), p_ref in zip(tp.named_parameters(), ref.parameters(), strict=True):
                    torch.testing.assert_close(_full(p.grad), p_ref.grad, rtol=2e-5, atol=2e-5,
                                               msg=f"{what}: grad of {name}")
    torch_backend.stream_block, torch_backend.packed_signs = real_block, real_packed

    # The column-parallel output as a DTensor or replicated, over uneven blocks (51 rows: 26 and
    # 25): its global shape was this rank's block times the ranks, (.., 52) on rank 0.
    from torch.distributed.tensor import Replicate

    for style in (dict(use_local_output=False), dict(output_layouts=Replicate())):
        torch.manual_seed(0)
        ref = _moved_off_init(MLP(3, 2, True, seed=42)).up
        holder = nn.Module()
        holder.up = copy.deepcopy(ref)
        parallelize_module(holder, mesh, {"up": ColwiseParallel(**style)})
        x = torch.randn(3, 37)
        y = holder.up(x)
        y = y.full_tensor() if "use_local_output" in style else y
        torch.testing.assert_close(y, ref(x), rtol=2e-5, atol=2e-5, msg=str(style))


def test_column_and_row_parallel_seeded_layers_equal_the_unsharded_ones():
    run_ranks("tests.distributed.test_tensor_parallel:_tp_mlp_equals_the_unsharded_one", timeout=240)


def _llama_plan():
    """transformers' own tensor-parallel plan for a LLaMA decoder layer, with lottalora's styles."""
    from lottalora.distributed import ColwiseParallel, RowwiseParallel

    return {"self_attn.q_proj": ColwiseParallel(), "self_attn.k_proj": ColwiseParallel(),
            "self_attn.v_proj": ColwiseParallel(), "self_attn.o_proj": RowwiseParallel(),
            "mlp.gate_proj": ColwiseParallel(), "mlp.up_proj": ColwiseParallel(), "mlp.down_proj": RowwiseParallel()}


def _llama_in_tensor_parallel_trains_like_the_unsharded_model(rank, world, directory):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from tests.support.models import converted_tiny_llama

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    ref = converted_tiny_llama()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, lottalora.Linear):
                m.beta.fill_(1.1)
    tp = copy.deepcopy(ref)
    for block in tp.model.layers:  # attention heads and MLP split over the ranks, as transformers' plan does
        parallelize_module(block, mesh, _llama_plan())
    ids = torch.randint(0, 96, (2, 9))
    opt, opt_ref = (torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (tp, ref))
    for _ in range(2):
        for model, optimizer in ((tp, opt), (ref, opt_ref)):
            loss = model(ids, labels=ids).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(tp(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-5)
    for (name, p), p_ref in zip(tp.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(_full(p.detach()), p_ref.detach(), rtol=1e-5, atol=1e-6, msg=name)
    lottalora.save(tp, directory)  # every rank calls; rank 0 writes whole tensors
    plain = converted_tiny_llama()
    lottalora.load(plain, directory)
    fresh = converted_tiny_llama()
    for block in fresh.model.layers:
        parallelize_module(block, mesh, _llama_plan())
    lottalora.load(fresh, directory)
    with torch.no_grad():
        want = ref(ids).logits
        # The saved parameters are the sharded run's, which match the unsharded run's to the
        # tolerance above: the logits of either reload to the tolerance the sharded run met.
        torch.testing.assert_close(plain(ids).logits, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fresh(ids).logits, want, rtol=1e-4, atol=1e-5)


def test_llama_in_tensor_parallel_trains_saves_and_loads_like_the_unsharded_model(tmp_path):
    run_ranks("tests.distributed.test_tensor_parallel:_llama_in_tensor_parallel_trains_like_the_unsharded_model",
              args=[str(tmp_path / "ck")], timeout=240)


def _rank_dependent_seed_is_refused_on_every_rank(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from lottalora.distributed import ColwiseParallel
    from lottalora.distributed.backbone_check import BackboneMismatchError

    mesh = init_device_mesh("cpu", (world,))
    model = MLP(2, 2, True, seed=rank)  # the slip: a seed derived from the rank
    with pytest.raises(BackboneMismatchError, match="rank 1 has another backbone for 1 layer"):
        parallelize_module(model, mesh, {"up": ColwiseParallel()})
    assert model.up.shard is None
    same = MLP(2, 2, True, seed=5)
    parallelize_module(same, mesh, {"up": ColwiseParallel()})
    with pytest.raises(ValueError, match="already sharded"):
        parallelize_module(same, mesh, {"up": ColwiseParallel()})


def test_tensor_parallel_styles_refuse_ranks_with_different_backbones_and_sharding_twice():
    run_ranks("tests.distributed.test_tensor_parallel:_rank_dependent_seed_is_refused_on_every_rank")


def _column_parallel_dropout_drops_the_same_inputs_on_every_rank(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from lottalora.distributed import ColwiseParallel, RowwiseParallel

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    ref = _moved_off_init(MLP(4, 2, True, seed=3))
    ref.up.lora_dropout = ref.down.lora_dropout = 0.5
    tp = copy.deepcopy(ref)
    parallelize_module(tp, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
    torch.manual_seed(100 + rank)  # the ranks' own generators differ, as they do in real runs
    x = torch.randn(4, 37, generator=torch.Generator().manual_seed(9))  # a replicated input
    mask_source = torch.Generator().manual_seed(tp.up.plan.dropout_seed)
    keep = (torch.rand(x.shape, generator=mask_source) >= 0.5).float() / 0.5
    up = ref.up
    want = (x @ (up.backbone_weight() * up.beta).T + up.bias
            + ((x * keep) @ up.lora_A.T) @ up.lora_B.T * up.scaling)
    import torch.distributed as dist

    got = tp.up(x)  # this rank's columns of the output
    pieces = [None] * world
    dist.all_gather_object(pieces, got.detach())
    torch.testing.assert_close(torch.cat(pieces, -1), want.detach(), rtol=2e-5, atol=2e-5)
    tp.eval()
    ref.eval()
    torch.testing.assert_close(tp(x), ref(x), rtol=2e-5, atol=2e-5)


def test_column_parallel_lora_dropout_drops_the_same_inputs_on_every_rank():
    run_ranks("tests.distributed.test_tensor_parallel:_column_parallel_dropout_drops_the_same_inputs_on_every_rank")


class _RecordedDropout:
    """Stands in for torch.nn.functional.dropout: draws each keep-mask (scaled by 1 / (1 - p)) from
    a generator of its own and records it, or hands out the masks queued in ``replay``, so that the
    unsharded model can drop exactly what the ranks dropped."""

    def __init__(self, seed):
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn, self.replay = [], []

    def __call__(self, x, p=0.5, training=True, inplace=False):
        assert training and not inplace
        if self.replay:
            return x * self.replay.pop(0)
        keep = (torch.rand(x.shape, generator=self.generator) >= p).to(x.dtype) / (1 - p)
        self.drawn.append(keep)
        return x * keep


def _tp_mlp_with_lora_dropout_trains_like_the_unsharded_one(rank, world, hidden):
    """Two SGD steps with lora_dropout: the tensor-parallel MLP's outputs, input gradients, parameter
    gradients and updated parameters equal the unsharded MLP's when that one drops the same
    elements: the column-parallel layer's mask from the ranks' shared generator, the row-parallel
    layer's the ranks' own masks of their columns, put side by side."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from lottalora.distributed import ColwiseParallel, RowwiseParallel

    mesh = init_device_mesh("cpu", (world,))
    real_dropout = torch.nn.functional.dropout
    dropout = _RecordedDropout(seed=100 + rank)  # the ranks' own masks differ, as they do in real runs
    torch.nn.functional.dropout = dropout
    try:
        for version in (1, 2):
            torch.manual_seed(0)
            ref = _moved_off_init(MLP(4, version, True, seed=3, hidden=hidden))
            ref.up.lora_dropout = ref.down.lora_dropout = 0.5
            tp = copy.deepcopy(ref)
            parallelize_module(tp, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
            up_masks = torch.Generator().manual_seed(tp.up.plan.dropout_seed)
            opt, opt_ref = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (tp, ref))
            data = torch.Generator().manual_seed(9)  # the same inputs on every rank
            for step in range(2):
                what = f"v{version} hidden {hidden} step {step}"
                x = torch.randn(3, 5, 37, generator=data, requires_grad=True)
                x_ref = x.detach().clone().requires_grad_()
                dy = torch.randn(3, 5, 37, generator=data)
                up_keep = (torch.rand(x.shape, generator=up_masks) >= 0.5).float() / 0.5
                y = tp(x)
                y.backward(dy)
                assert len(dropout.drawn) == 1, what  # the row-parallel layer's; up uses the shared generator
                down_pieces = [None] * world
                dist.all_gather_object(down_pieces, dropout.drawn.pop())
                dropout.replay = [up_keep, torch.cat(down_pieces, -1)]
                y_ref = ref(x_ref)
                y_ref.backward(dy)
                assert not dropout.replay, what
                torch.testing.assert_close(y, y_ref, rtol=2e-5, atol=2e-5, msg=what)
                torch.testing.assert_close(x.grad, x_ref.grad, rtol=2e-5, atol=2e-5, msg=what)
                for (name, p), p_ref in zip(tp.named_parameters(), ref.parameters(), strict=True):
                    torch.testing.assert_close(_full(p.grad), p_ref.grad, rtol=2e-5, atol=2e-5,
                                               msg=f"{what}: grad of {name}")
                opt.step()
                opt_ref.step()
                opt.zero_grad()
                opt_ref.zero_grad()
            for (name, p), p_ref in zip(tp.named_parameters(), ref.parameters(), strict=True):
                torch.testing.assert_close(_full(p.detach()), p_ref.detach(), rtol=2e-5, atol=2e-5, msg=name)
    finally:
        torch.nn.functional.dropout = real_dropout


@pytest.mark.parametrize("hidden", [51, 1])
def test_lora_dropout_in_tensor_parallel_trains_like_the_unsharded_model(hidden):
    """hidden=1: the second rank's blocks of both layers are empty."""
    run_ranks("tests.distributed.test_tensor_parallel:_tp_mlp_with_lora_dropout_trains_like_the_unsharded_one",
              args=[hidden], timeout=240)


def _replicated_gradients_sum_in_float32(rank, world):
    """On each element one rank holds 1 and the others 2^-8 + 2^-15: summed in float32 and
    rounded once that is 1 + 2^-7 in bf16, but a bf16 sum that adds 1 first rounds up twice
    (1 + 2^-6); the ring starts each chunk's sum at another rank, so some element would."""
    import torch.distributed as dist

    from lottalora.distributed.tensor_parallel import _AllReduceInBackward

    small = 2.0 ** -8 + 2.0 ** -15
    grad = torch.tensor([1.0 if j % world == rank else small for j in range(8 * world)], dtype=torch.bfloat16)
    param = torch.zeros(8 * world, dtype=torch.bfloat16, requires_grad=True)
    _AllReduceInBackward.apply(param, dist.group.WORLD, True).backward(grad)
    want = torch.tensor(1.0 + (world - 1) * small, dtype=torch.float32).to(torch.bfloat16)
    assert torch.equal(param.grad, want.expand_as(param.grad)), param.grad


def test_replicated_bf16_gradients_are_summed_in_float32_over_three_ranks():
    run_ranks("tests.distributed.test_tensor_parallel:_replicated_gradients_sum_in_float32", world_size=3)
