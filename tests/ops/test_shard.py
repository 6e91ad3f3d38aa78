"""seeded_linear_shard: the op on one block of a bigger backbone, held to its float64 reference
and to the whole layer it is a piece of."""

import pytest
import torch

import lottalora
from lottalora.backbone import BackboneBlock
from lottalora.ops import seeded_linear, seeded_linear_ref, seeded_linear_shard, torch_backend
from tests.support.tolerances import assert_close

# (rows, cols) blocks of a 33 x 129 backbone; the last four are empty (no rows, no columns, neither,
# no columns at a span boundary), as the last ranks' blocks are when a layer has fewer features
# than ranks.
SHAPES = [((3, 20), (5, 17)), ((0, 33), (0, 129)), ((32, 33), (128, 129)), ((7, 7), (0, 129)), ((3, 20), (5, 5)),
          ((33, 33), (129, 129)), ((0, 33), (128, 128))]


def _inputs(spec, rows, cols, rank, dtype, bias=True):
    gen = torch.Generator().manual_seed(rows[0] * 131 + cols[1])
    n, k = rows[1] - rows[0], cols[1] - cols[0]

    def rand(*shape):
        return (torch.randn(*shape, generator=gen) * 0.5).to(dtype).requires_grad_()

    x = rand(2, 3, k)
    a, b = (rand(rank, k), rand(n, rank)) if rank else (None, None)
    return x, a, b, rand(1).detach().float().add(1).requires_grad_(), rand(n) if bias else None


@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("version,init", [(2, None), (1, "gaussian")])
@pytest.mark.parametrize("rank", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_op_and_its_gradients_match_the_float64_reference(rows, cols, version, init, rank, dtype):
    spec = lottalora.BackboneSpec(11, 5, 129, 33, init, version)
    x, a, b, beta, bias = _inputs(spec, rows, cols, rank, dtype)
    leaves = [t for t in (x, a, b, beta, bias) if t is not None]
    y = seeded_linear_shard(x, spec, rows, cols, a, b, beta, bias, 0.5)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    got = torch.autograd.grad(y, leaves, dy)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    it = iter(ref_leaves)
    rx, ra, rb, rbeta = next(it), next(it) if a is not None else None, next(it) if b is not None else None, next(it)
    rbias = next(it) if bias is not None else None
    want = seeded_linear_ref(rx, BackboneBlock(spec, rows, cols), ra, rb, rbeta, rbias, 0.5)
    want_grads = torch.autograd.grad(want, ref_leaves, dy.double(), allow_unused=True)
    assert y.dtype == dtype and y.shape == (2, 3, rows[1] - rows[0])
    assert_close(y, want, dtype, "y")
    names = ["dx", "dA", "dB", "dbeta", "dbias"]
    present = [n for n, t in zip(names, (x, a, b, beta, bias), strict=True) if t is not None]
    for name, g, w, leaf in zip(present, got, want_grads, leaves, strict=True):
        w = torch.zeros_like(leaf, dtype=torch.float64) if w is None else w
        assert_close(g, w, dtype, name)


def test_row_blocks_side_by_side_are_the_whole_layer():
    layer = lottalora.Linear(129, 33, rank=4, seed=8)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.beta.fill_(0.8)
    x = torch.randn(5, 129)
    parts = [seeded_linear_shard(x, layer.spec, (r0, r1), (0, 129), layer.lora_A, layer.lora_B[r0:r1],
                                 layer.beta, layer.bias[r0:r1], layer.scaling) for r0, r1 in ((0, 17), (17, 33))]
    assert_close(torch.cat(parts, -1), layer(x).double(), torch.float32, "row blocks")
    cols = [seeded_linear_shard(x[:, c0:c1], layer.spec, (0, 33), (c0, c1), layer.lora_A[:, c0:c1], layer.lora_B,
                                layer.beta, None, layer.scaling) for c0, c1 in ((0, 64), (64, 129))]
    assert_close(cols[0] + cols[1] + layer.bias, layer(x).double(), torch.float32, "column blocks")


def test_chunked_generation_gives_the_same_result(monkeypatch):
    spec = lottalora.BackboneSpec(3, 1, 300, 40)
    x = torch.randn(4, 280)
    whole = seeded_linear_shard(x, spec, (2, 40), (20, 300), None, None, torch.ones(1))
    monkeypatch.setattr(torch_backend, "V2_BLOCK_VALUES", 128 * 38)  # one 128-column span per chunk
    assert len(list(torch_backend.column_ranges(BackboneBlock(spec, (2, 40), (20, 300))))) == 3
    chunked = seeded_linear_shard(x, spec, (2, 40), (20, 300), None, None, torch.ones(1))
    assert_close(chunked, whole.double(), torch.float32, "chunked")  # the sums' order differs: fp32 rounding


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(rows=(0, 34)), ValueError, r"rows must satisfy 0 <= start <= stop <= 33, got \(0, 34\)"),
    (dict(cols=[0, 8]), TypeError, "cols must be a"),
    (dict(cols=(0, 9)), ValueError, r"input must have shape \(\*, 9\)"),
    (dict(beta=torch.ones(2)), ValueError, "beta must have one element"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    spec = lottalora.BackboneSpec(0, 0, 16, 33)
    args = dict(x=torch.randn(2, 8), spec=spec, rows=(0, 33), cols=(0, 8), lora_A=None, lora_B=None,
                beta=torch.ones(1))
    with pytest.raises(error, match=match):
        seeded_linear_shard(**{**args, **kwargs})


@pytest.mark.parametrize("version,init", [(2, None), (1, "gaussian")])
def test_the_triton_generator_gives_the_blocks_the_stream_gives(monkeypatch, version, init):
    spec = lottalora.BackboneSpec(5, 9, 129, 33, init, version)
    # 6 rows: past V2_TABLE_GEMV_MAX_M, so both backends multiply the same column blocks.
    x = torch.randn(6, 100)
    a, b = torch.randn(2, 100), torch.randn(20, 2)
    want = seeded_linear_shard(x, spec, (13, 33), (29, 129), a, b, torch.ones(1), None, 0.5)
    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")  # on CPU this runs under TRITON_INTERPRET=1
    assert torch.equal(seeded_linear_shard(x, spec, (13, 33), (29, 129), a, b, torch.ones(1), None, 0.5), want)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("version,init", [(2, None), (1, "gaussian")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_shard_of_the_whole_layer_is_seeded_linear_bit_for_bit(monkeypatch, backend, version, init, dtype):
    """The block op is the layer's op on a block: over the whole backbone it gives the unsharded
    op's bits, the output and every gradient (dA and dB rounded once, with the scale as the
    GEMM's alpha), on both backends (triton under TRITON_INTERPRET=1 on a CPU)."""
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)
    spec = lottalora.BackboneSpec(7, 3, 300, 40, init, version)
    gen = torch.Generator().manual_seed(0)
    x, a, b, bias, dy = (torch.randn(*shape, generator=gen).to(dtype) for shape in ((6, 300), (3, 300), (40, 3),
                                                                                      (40,), (6, 40)))
    beta = torch.tensor([0.7])
    leaves = [t.requires_grad_() for t in (x, a, b, beta, bias)]
    shard = seeded_linear_shard(x, spec, (0, 40), (0, 300), a, b, beta, bias, 0.3)
    whole = seeded_linear(x, spec, a, b, beta, bias, 0.3)
    assert torch.equal(shard, whole)
    for name, g, w in zip(["dx", "dA", "dB", "dbeta", "dbias"], torch.autograd.grad(shard, leaves, dy),
                          torch.autograd.grad(whole, leaves, dy), strict=True):
        assert torch.equal(g, w), name


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_an_empty_block_gives_empty_outputs_and_zero_gradients(monkeypatch, backend):
    """The last ranks' blocks are empty when a layer has fewer features than ranks: no rows gives an
    (M, 0) output and zero input gradients, no columns gives the bias alone and zero gradients for
    what the block's (absent) inputs feed."""
    monkeypatch.setenv("LOTTALORA_BACKEND", backend)  # triton on CPU runs under TRITON_INTERPRET=1
    spec = lottalora.BackboneSpec(5, 9, 129, 33)
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=gen).requires_grad_()

    x, a, b, beta, bias = leaf(4, 3, 100), leaf(2, 100), leaf(0, 2), leaf(1), leaf(0)
    y = seeded_linear_shard(x, spec, (7, 7), (29, 129), a, b, beta, bias, 0.5)
    assert y.shape == (4, 3, 0)
    dx, da, db, dbeta, dbias = torch.autograd.grad(y, (x, a, b, beta, bias), torch.empty(4, 3, 0))
    assert torch.equal(dx, torch.zeros_like(x)) and torch.equal(da, torch.zeros_like(a))
    assert db.shape == (0, 2) and dbias.shape == (0,) and torch.equal(dbeta, torch.zeros(1))

    x, a, b, beta, bias = leaf(4, 3, 0), leaf(2, 0), leaf(20, 2), leaf(1), leaf(20)
    y = seeded_linear_shard(x, spec, (13, 33), (50, 50), a, b, beta, bias, 0.5)
    assert torch.equal(y, bias.detach().expand(4, 3, 20))
    dy = torch.randn(4, 3, 20, generator=gen)
    dx, da, db, dbeta, dbias = torch.autograd.grad(y, (x, a, b, beta, bias), dy)
    assert dx.shape == (4, 3, 0) and da.shape == (2, 0)
    assert torch.equal(db, torch.zeros_like(b)) and torch.equal(dbeta, torch.zeros(1))
    assert_close(dbias, dy.sum((0, 1)).double(), torch.float32, "dbias")


@pytest.mark.parametrize("version,init", [(2, None), (1, "gaussian")])
def test_lora_input_gradients_pass_gradcheck_in_float64(version, init):
    spec = lottalora.BackboneSpec(11, 5, 129, 33, init, version)
    rows, cols = (3, 9), (5, 17)
    x, a, b, beta, bias = _inputs(spec, rows, cols, 3, torch.float64)
    x_dropped = (x.detach() * 1.7).requires_grad_()

    def op(x, a, b, beta, bias, lora_input):
        return seeded_linear_shard(x, spec, rows, cols, a, b, beta, bias, 0.5, lora_input=lora_input)

    assert torch.autograd.gradcheck(op, (x, a, b, beta.detach().double().requires_grad_(), bias, x_dropped))


@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_input_is_the_unfused_adapter_on_top_of_the_backbone(rows, cols, dtype):
    """With lora_input, y and every gradient are the rank-0 block plus scale * (lora_input @ A^T) @ B^T,
    both held to the float64 reference; x's gradient is the backbone's alone."""
    spec = lottalora.BackboneSpec(11, 5, 129, 33)
    x, a, b, beta, bias = _inputs(spec, rows, cols, 3, dtype)
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) >= 0.3
    x_dropped = (x.detach() * keep / 0.7).to(dtype).requires_grad_()
    leaves = (x, a, b, beta, bias, x_dropped)
    dy = torch.randn(*x.shape[:-1], rows[1] - rows[0], generator=torch.Generator().manual_seed(2)).to(dtype)

    fused = seeded_linear_shard(x, spec, rows, cols, a, b, beta, bias, 0.5, lora_input=x_dropped)
    fused_grads = torch.autograd.grad(fused, leaves, dy)
    unfused = (seeded_linear_shard(x, spec, rows, cols, None, None, beta, bias, 0.5)
               + (x_dropped @ a.T) @ b.T * 0.5)
    unfused_grads = torch.autograd.grad(unfused, leaves, dy, allow_unused=True)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    rx, ra, rb, rbeta, rbias, r_dropped = ref_leaves
    want = seeded_linear_ref(rx, BackboneBlock(spec, rows, cols), ra, rb, rbeta, rbias, 0.5, lora_input=r_dropped)
    want_grads = torch.autograd.grad(want, ref_leaves, dy.double())
    assert fused.dtype == dtype
    assert_close(fused, want, dtype, "y")
    assert_close(unfused, want, dtype, "unfused y")
    for name, g, u, w in zip(["dx", "dA", "dB", "dbeta", "dbias", "d lora_input"], fused_grads, unfused_grads,
                             want_grads, strict=True):
        assert_close(g, w, dtype, name)
        assert_close(u, w, dtype, f"unfused {name}")
    backbone_only = seeded_linear_shard(x, spec, rows, cols, None, None, beta, bias, 0.5)
    assert torch.equal(fused_grads[0], torch.autograd.grad(backbone_only, x, dy)[0])


def test_lora_input_equal_to_x_is_the_layer_without_it():
    spec = lottalora.BackboneSpec(11, 5, 129, 33)
    x, a, b, beta, bias = _inputs(spec, (3, 20), (5, 17), 3, torch.float32)
    dy = torch.randn(2, 3, 17)
    plain = seeded_linear_shard(x, spec, (3, 20), (5, 17), a, b, beta, bias, 0.5)
    plain_grads = torch.autograd.grad(plain, (x, a, b, beta, bias), dy)
    x_again = x.detach().requires_grad_()
    same = seeded_linear_shard(x, spec, (3, 20), (5, 17), a, b, beta, bias, 0.5, lora_input=x_again)
    dx, da, db, dbeta, dbias, d_again = torch.autograd.grad(same, (x, a, b, beta, bias, x_again), dy)
    assert torch.equal(same, plain)
    assert_close(dx + d_again, plain_grads[0].double(), torch.float32, "dx")
    for name, g, want in zip(["dA", "dB", "dbeta", "dbias"], (da, db, dbeta, dbias), plain_grads[1:], strict=True):
        assert torch.equal(g, want), name


def test_lora_input_is_cast_by_autocast_as_x_is():
    spec = lottalora.BackboneSpec(0, 0, 16, 33)
    x, a, b = torch.randn(2, 8), torch.randn(2, 8), torch.randn(33, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = seeded_linear_shard(x, spec, (0, 33), (0, 8), a, b, torch.ones(1), None, 0.5, lora_input=x * 2)
    want = seeded_linear_shard(x.bfloat16(), spec, (0, 33), (0, 8), a.bfloat16(), b.bfloat16(), torch.ones(1), None,
                               0.5, lora_input=(x * 2).bfloat16())
    assert y.dtype == torch.bfloat16 and torch.equal(y, want)


@pytest.mark.parametrize("lora_input,adapter,error,match", [
    (torch.randn(3, 8), True, ValueError, r"lora_input must have shape \(2, 8\), got \(3, 8\)"),
    (torch.randn(2, 8, dtype=torch.float64), True, TypeError, "lora_input has dtype torch.float64"),
    (torch.randn(2, 8, device="meta"), True, ValueError, "lora_input is on meta"),
    (torch.randn(2, 8), False, ValueError, "lora_input was given to a layer without an adapter"),
    (torch.randn(2, 8).numpy(), True, TypeError, "lora_input must be a torch.Tensor or None, got ndarray"),
])
def test_bad_lora_inputs_are_named(lora_input, adapter, error, match):
    spec = lottalora.BackboneSpec(0, 0, 16, 33)
    a, b = (torch.randn(2, 8), torch.randn(33, 2)) if adapter else (None, None)
    with pytest.raises(error, match=match):
        seeded_linear_shard(torch.randn(2, 8), spec, (0, 33), (0, 8), a, b, torch.ones(1), lora_input=lora_input)
