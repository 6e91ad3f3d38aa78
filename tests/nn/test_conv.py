"""lottalora.Conv1d / Conv2d against nn.Conv*d with the dense backbone in float64: every argument,
gradients, gradcheck, bounded chunks, meta, state and bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lottalora
from lottalora.ops import conv as conv_op
from tests.support.tolerances import assert_close

# (dims, in, out, kernel, options): odd shapes and every argument at least once.
CASES = [
    (1, 3, 5, 3, {}),
    (1, 4, 6, 4, dict(stride=2, padding=3, dilation=2, groups=2, rank=4)),
    (1, 5, 7, 3, dict(padding="same", padding_mode="reflect", bias=False)),
    (1, 6, 3, 2, dict(padding="valid", groups=3, rank=3, use_rslora=True, alpha=5.0)),
    (2, 3, 5, (3, 2), dict(stride=(2, 1), padding=(1, 2), padding_mode="replicate")),
    (2, 4, 4, 3, dict(padding=1, padding_mode="circular", groups=4, rank=4)),
    (2, 2, 6, (2, 3), dict(padding="same", dilation=(2, 1), rank=1)),
    (2, 6, 4, 1, dict(groups=2, rank=2, bias=False, stride=3)),
    (2, 3, 2, 3, dict(rank=0)),
]
SPATIAL = {1: (13,), 2: (9, 7)}


def _layer(dims, cin, cout, k, options, dtype=torch.float64, seed=3):
    cls = lottalora.Conv1d if dims == 1 else lottalora.Conv2d
    layer = cls(cin, cout, k, seed=seed, stream=11, **{"rank": 2, **options}).to(dtype)
    with torch.no_grad():  # off the init, so every term counts
        if layer.lora_B is not None:
            layer.lora_B.normal_()
        layer.beta.fill_(0.7)
    return layer


def _dense(layer, dtype=torch.float64):
    """The layer as plain nn.Conv modules (dense backbone, PEFT-style adapter) in ``dtype``, and
    its tensors to compare gradients against."""
    cls = nn.Conv1d if layer.dims == 1 else nn.Conv2d
    common = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                  padding_mode=layer.padding_mode, bias=False, dtype=dtype)
    base = cls(layer.in_channels, layer.out_channels, layer.kernel_size, **common)
    base.weight = nn.Parameter(layer.backbone_weight(torch.float64).to(dtype), requires_grad=False)
    beta = layer.beta.detach().to(dtype).clone().requires_grad_()
    bias = None if layer.bias is None else layer.bias.detach().to(dtype).clone().requires_grad_()
    a = b = None
    if layer.rank:
        a = cls(layer.in_channels, layer.rank, layer.kernel_size, **common)
        a.weight = nn.Parameter(layer.lora_A.detach().to(dtype).clone())
        b = cls(layer.rank, layer.out_channels, 1, groups=layer.groups, bias=False, dtype=dtype)
        b.weight = nn.Parameter(layer.lora_B.detach().to(dtype).clone())

    def forward(x, dropped=None):
        y = beta * base(x)
        if a is not None:
            y = y + layer.scaling * b(a(x if dropped is None else dropped))
        if bias is not None:
            y = y + bias.view(-1, *(1,) * layer.dims)
        return y

    tensors = {"beta": beta, "bias": bias, "lora_A": a.weight if a else None, "lora_B": b.weight if b else None}
    return forward, tensors


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}d-{c[1]}-{c[2]}-{c[3]}-{sorted(c[4].items())}")
def test_forward_and_gradients_match_dense_conv(case, dtype):
    dims, cin, cout, k, options = case
    layer = _layer(dims, cin, cout, k, options, dtype)
    forward, tensors = _dense(layer)
    x = torch.randn(2, cin, *SPATIAL[dims], dtype=dtype, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    y, ref = layer(x), forward(x64)
    assert y.dtype == dtype
    assert_close(y, ref, dtype, "y")
    dy = torch.randn_like(ref)
    y.backward(dy.to(dtype))
    ref.backward(dy)
    assert_close(x.grad, x64.grad, dtype, "dx")
    for name, expected in tensors.items():
        actual = getattr(layer, name)
        if expected is None:
            assert actual is None
            continue
        assert_close(actual.grad, expected.grad, dtype, f"d{name}")


def test_bfloat16_accumulates_in_float32():
    layer = _layer(2, 4, 6, 3, dict(padding=1), torch.bfloat16)
    forward, _ = _dense(layer)
    x = torch.randn(2, 4, 6, 5, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    assert_close(y, forward(x.double()), torch.bfloat16, "y")


@pytest.mark.parametrize("train", [True, False])
def test_dropout_applies_to_the_adapter_input_while_training(train):
    layer = _layer(1, 3, 4, 3, dict(lora_dropout=0.5, padding=1, padding_mode="reflect"))
    layer.train(train)
    forward, _ = _dense(layer)
    x = torch.randn(2, 3, 11, dtype=torch.float64)
    torch.manual_seed(7)
    y = layer(x)
    torch.manual_seed(7)
    dropped = F.dropout(x, 0.5, training=True) if train else None
    assert_close(y, forward(x, dropped), torch.float64, "y")
    if train:  # the mask matters: without it the output differs
        assert not torch.allclose(y, forward(x))


def test_gradcheck_and_gradgradcheck_float64():
    layer = _layer(1, 2, 2, 2, dict(padding=1, groups=2, rank=2, padding_mode="reflect"))
    x = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    params = [layer.lora_A, layer.lora_B, layer.beta, layer.bias]

    def f(x, a, b, beta, bias):
        return torch.func.functional_call(layer, {"lora_A": a, "lora_B": b, "beta": beta, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(f, (x, *params))
    # The backward is differentiable ops on dy, x and beta (the chunks regenerated again), so a
    # graph through the gradient (gradient penalties) is exact too.
    # (through x and beta, the custom function's inputs; the adapter is ordinary autograd)
    assert torch.autograd.gradgradcheck(lambda x, beta: f(x, layer.lora_A, layer.lora_B, beta, layer.bias),
                                        (x, layer.beta))


@pytest.mark.parametrize("version", [1, 2])
def test_backbone_weight_is_the_streams_matrix_reshaped(version):
    conv = lottalora.Conv2d(6, 3, (3, 2), groups=3, rank=3, seed=2**64 - 1, stream=9, stream_version=version)
    matrix = lottalora.Linear(6 // 3 * 3 * 2, 3, seed=2**64 - 1, stream=9, stream_version=version).backbone_weight()
    w = conv.backbone_weight()
    assert w.shape == (3, 2, 3, 2) and w.dtype == torch.float32
    assert torch.equal(w, matrix.view(3, 2, 3, 2))
    # row-major over (in // groups, *kernel): weight[o, c, i, j] is column (c * 3 + i) * 2 + j
    assert w[2, 1, 2, 0] == matrix[2, (1 * 3 + 2) * 2 + 0]
    assert conv.spec == lottalora.BackboneSpec(2**64 - 1, 9, 12, 3, None, version)


def test_chunks_stay_within_the_budget_and_respect_groups(monkeypatch):
    sizes = []
    real = conv_op.conv_weight_chunk

    def spy(spec, geometry, chunk, dtype, device):
        w = real(spec, geometry, chunk, dtype, device)
        sizes.append(w.numel())
        return w

    layer = _layer(2, 8, 12, 3, dict(padding=1, groups=4, rank=4))
    forward, _ = _dense(layer)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    ref = forward(x)
    monkeypatch.setattr(conv_op, "conv_weight_chunk", spy)
    for budget in (1, 20, 40, 1000):  # rows inside a group, one group, two groups, all at once
        monkeypatch.setattr(conv_op, "CONV_CHUNK_VALUES", budget)
        sizes.clear()
        y = layer(x)
        (dx,) = torch.autograd.grad(y.sum(), x)
        assert_close(y, ref, torch.float64, f"y at budget {budget}")
        (dx_ref,) = torch.autograd.grad(ref.sum(), x, retain_graph=True)
        assert_close(dx, dx_ref, torch.float64, f"dx at budget {budget}")
        assert max(sizes) <= max(budget, 2 * 9)  # a chunk holds at least one row of 18 values


def test_a_large_conv_never_generates_its_whole_backbone(monkeypatch):
    sizes = []
    real = conv_op.conv_weight_chunk
    monkeypatch.setattr(conv_op, "conv_weight_chunk", lambda *a: sizes.append(real(*a).numel()) or real(*a))
    layer = lottalora.Conv2d(512, 1024, 3, padding=1, rank=4)  # 4.7M backbone values
    x = torch.randn(1, 512, 3, 3, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.beta.grad is not None
    assert len(sizes) >= 2 * 5 and max(sizes) <= conv_op.CONV_CHUNK_VALUES


def test_meta_device_infers_shapes_in_forward_and_backward():
    layer = lottalora.Conv2d(3, 8, 3, stride=2, padding="valid", rank=4, device="meta")
    x = torch.empty(2, 3, 11, 9, device="meta", requires_grad=True)
    y = layer(x)
    assert y.device.type == "meta" and y.shape == (2, 8, 5, 4) and y.dtype == torch.float32
    y.sum().backward()
    assert x.grad.shape == x.shape and layer.lora_A.grad.shape == layer.lora_A.shape


def test_unbatched_input_and_rank_zero():
    layer = _layer(1, 3, 4, 3, dict(rank=0, padding=1))
    assert layer.lora_A is None and layer.lora_B is None and layer.lora_factors_2d() is None
    x = torch.randn(3, 10, dtype=torch.float64)
    assert torch.allclose(layer(x), layer(x[None])[0])
    assert layer(x).shape == (4, 10)


def test_lora_factors_2d_give_the_adapters_weight():
    layer = _layer(2, 6, 9, (2, 3), dict(groups=3, rank=6))
    a2d, b2d = layer.lora_factors_2d()
    assert a2d.shape == (6, 2 * 2 * 3) and b2d.shape == (9, 6)
    assert b2d[0, 2:].abs().sum() == 0  # block-diagonal: group 0's outputs use its rank channels only
    x = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    delta = (layer.scaling * b2d @ a2d).view(9, 2, 2, 3)
    full = F.conv2d(x, layer.backbone_weight(torch.float64) * layer.beta + delta, layer.bias, groups=3)
    assert_close(layer(x), full, torch.float64, "merged")
    assert torch.allclose(layer.delta_weight(), delta)


def test_state_dict_round_trip_carries_seed_and_shapes():
    a = _layer(2, 4, 6, 3, dict(padding=1), seed=5)
    b = _layer(2, 4, 6, 3, dict(padding=1), seed=9)
    assert set(a.state_dict()) == {"lora_A", "lora_B", "beta", "bias", "_extra_state"}
    assert a.state_dict()["lora_A"].shape == (2, 4, 3, 3) and a.state_dict()["lora_B"].shape == (6, 2, 1, 1)
    b.load_state_dict(a.state_dict())
    assert b.seed == 5
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    assert torch.equal(a(x), b(x))
    c = _layer(2, 4, 6, 3, dict(rank=4))
    with pytest.raises(ValueError, match="rank-2 layer"):
        c.load_state_dict(a.state_dict())
    state = a.state_dict()
    del state["_extra_state"]
    with pytest.raises(ValueError, match="lora_A must be a floating-point tensor of shape"):
        c.load_state_dict(state, strict=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=0), "in_channels"),
    (dict(out_channels=2.5), "out_channels"),
    (dict(kernel_size=(3,)), "kernel_size"),
    (dict(kernel_size=0), "kernel_size"),
    (dict(stride=0), "stride"),
    (dict(padding=-1), "padding"),
    (dict(padding="full"), "padding"),
    (dict(padding="same", stride=2), "stride"),
    (dict(dilation=(1, 0)), "dilation"),
    (dict(groups=3), "groups"),
    (dict(groups=2, rank=3), "rank"),
    (dict(padding_mode="mirror"), "padding_mode"),
    (dict(rank=-1), "rank"),
    (dict(alpha=0.0), "alpha"),
    (dict(lora_dropout=1.0), "lora_dropout"),
])
def test_bad_arguments_are_named(kwargs, match):
    args = {"in_channels": 4, "out_channels": 6, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        lottalora.Conv2d(**args)


def test_bad_input_and_dora_are_refused_by_name():
    layer = lottalora.Conv1d(3, 4, 3)
    with pytest.raises(ValueError, match="in_channels=3"):
        layer(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="dimensions"):
        layer(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="use_dora=True needs an adapter"):
        lottalora.Conv1d(3, 4, 3, rank=0, use_dora=True)
    with pytest.raises(TypeError, match="use_dora must be a bool"):
        lottalora.Conv1d(3, 4, 3, use_dora=1)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_an_integer_input_is_refused_as_linears_is(dtype):
    """As lottalora.Linear's (nn.Conv2d raises too): an integer input gave truncated integer outputs."""
    layer = lottalora.Conv2d(2, 3, 3, rank=1)
    x = torch.ones(1, 2, 4, 4, dtype=dtype)
    with pytest.raises(TypeError, match=f"input dtype must be one of .* got {dtype}"):
        layer(x)
    with pytest.raises(TypeError, match="input dtype"):
        conv_op.seeded_conv(x, layer.spec, layer.geometry, layer.beta)


@pytest.mark.parametrize("layer_dtype, input_dtype", [(torch.float32, torch.float64), (torch.bfloat16, torch.float32),
                                                      (torch.float32, torch.float16)])
@pytest.mark.parametrize("rank", [0, 2])
def test_an_input_in_another_float_dtype_is_refused_outside_autocast(layer_dtype, input_dtype, rank):
    """As lottalora.Linear and nn.Conv2d refuse it (the seeded conv ran, in the input's dtype);
    inside autocast the casts make them agree, and float64 (which autocast leaves) is refused."""
    layer = lottalora.Conv2d(2, 3, 3, rank=rank, dtype=layer_dtype)
    x = torch.randn(1, 2, 4, 4, dtype=input_dtype)
    with pytest.raises(TypeError, match=f"{'lora_A' if rank else 'bias'} has dtype {layer_dtype} but the input "
                                        f"has {input_dtype}: they must match"):
        layer(x)
    if input_dtype != torch.float64:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="has dtype torch.bfloat16"):
        layer(torch.randn(1, 2, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("shape, dims", [((1, 2, 0, 8), 2), ((1, 2, 1, 8), 2), ((1, 2, 0, 0), 2), ((0, 2, 0, 8), 2),
                                         ((1, 2, 0), 1), ((2, 1), 1)])
def test_an_input_smaller_than_the_kernel_is_refused_as_nn_convs_is(shape, dims):
    """Any spatial size below the kernel's (0 too) gets nn.Conv's error (0 and 1 failed on a
    negative dimension in torch.empty)."""
    layer = (lottalora.Conv1d, lottalora.Conv2d)[dims - 1](2, 3, 3, rank=1)
    for x in (torch.randn(shape), torch.randn(shape, device="meta")):
        with pytest.raises(RuntimeError, match="Kernel size can't be greater than actual input size"):
            layer.to(x.device)(x)


@pytest.mark.parametrize("case", [CASES[1], CASES[5], CASES[8]], ids=["conv1d_groups", "conv2d_circular", "rank0"])
def test_torch_func_transforms_and_forward_mode_ad_match_the_dense_conv(case, monkeypatch):
    """grad, vmap, jvp and dual tensors run (they failed inside torch's autograd.Function check,
    'must override the setup_context staticmethod'), equal to the dense conv's; a small chunk
    budget puts several chunks in each call."""
    from torch.autograd import forward_ad
    from torch.func import functional_call, grad, jvp, vmap

    monkeypatch.setattr(conv_op, "CONV_CHUNK_VALUES", 8)
    dims, cin, cout, k, options = case
    layer = _layer(dims, cin, cout, k, options)
    forward, tensors = _dense(layer)
    x, tangent = torch.randn(2, cin, *SPATIAL[dims], dtype=torch.float64), torch.randn(2, cin, *SPATIAL[dims],
                                                                                       dtype=torch.float64)
    dy = torch.randn_like(forward(x))
    params = {name: p.detach() for name, p in layer.named_parameters()}
    grads = grad(lambda p: (functional_call(layer, p, (x,)) * dy).sum())(params)
    (forward(x) * dy).sum().backward()
    for name, expected in tensors.items():
        if expected is not None:
            assert_close(grads[name], expected.grad, torch.float64, f"torch.func.grad d{name}")
    assert_close(vmap(layer)(torch.stack([x, tangent])), torch.stack([forward(x), forward(tangent)]),
                 torch.float64, "vmap")
    y, y_dot = jvp(layer, (x,), (tangent,))
    assert_close(y_dot, jvp(forward, (x,), (tangent,))[1], torch.float64, "jvp")
    with forward_ad.dual_level():
        dual = forward_ad.unpack_dual(layer(forward_ad.make_dual(x, tangent)))
    assert_close(dual.tangent, y_dot, torch.float64, "forward-mode AD")


def test_forward_and_backward_peak_far_below_the_dense_weight():
    from tests.support.memory import peak_bytes_added

    # A budget of 2^18 values (1 MiB chunks) keeps the layer small and the margin wide.
    setup = """
import lottalora
import lottalora.ops.conv as conv_op
conv_op.CONV_CHUNK_VALUES = 1 << 18
layer = lottalora.Conv2d(1024, 1024, 3, padding=1, rank=4)
x = torch.randn(1, 1024, 4, 4, requires_grad=True)
layer(x).sum().backward()
"""
    dense = 1024 * 1024 * 9 * 4  # 36 MiB of float32
    peak = peak_bytes_added(setup, "layer(x).sum().backward()")
    assert peak < dense / 4, f"forward + backward added {peak / 2**20:.1f} MiB, the dense weight is {dense / 2**20:.0f}"


def _grads(layer, x, y):
    return torch.autograd.grad(y.square().sum(), [x, *(p for p in layer.parameters() if p.requires_grad)])


@pytest.mark.parametrize("dims, options", [(1, dict(padding=1)), (2, dict(padding=(1, 2), stride=2, groups=1)),
                                           (2, dict(groups=2, dilation=2, padding_mode="reflect", padding=2))])
def test_torch_compile_holds_the_seeded_conv_in_one_graph_with_the_same_gradients(dims, options):
    """fullgraph=True: the conv is two registered ops in the graph (no graph break), whose
    outputs and gradients are the eager layer's bits (dynamo and AOT autograd, no codegen)."""
    layer = _layer(dims, 4, 6, 3, options, torch.float32)
    x = torch.randn(2, 4, *(11,) * dims, requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y_eager = layer(x)
    assert torch.equal(y, y_eager)
    for got, want in zip(_grads(layer, x, y), _grads(layer, x, y_eager)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("options", [dict(padding=1), dict(groups=2, stride=2, padding_mode="reflect", padding=1),
                                     dict(use_dora=True, padding=1)])
def test_a_channels_last_input_gives_nn_conv2ds_memory_formats_and_the_same_values(options):
    """As nn.Conv2d: a channels_last x gives channels_last y and dx (a channels_last CNN stays
    channels_last through the seeded convs), with the values of the contiguous input's."""
    layer = _layer(2, 4, 6, 3, options, torch.float32)
    dense = torch.nn.Conv2d(4, 6, 3, **{k: v for k, v in options.items() if k != "use_dora"})
    base = torch.randn(2, 4, 9, 10)
    results = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = base.to(memory_format=fmt).requires_grad_()
        y = layer(x)
        (dx,) = torch.autograd.grad(y.square().sum(), [x])
        want = dense(base.to(memory_format=fmt))
        assert y.is_contiguous(memory_format=fmt) == want.is_contiguous(memory_format=fmt) == True  # noqa: E712
        assert dx.is_contiguous(memory_format=fmt)
        results[fmt] = y, dx
    (y0, dx0), (y1, dx1) = results.values()
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-6)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=1e-5)


def test_torch_compile_default_backend_trains_a_channels_last_seeded_conv_in_one_graph():
    """Inductor, as users run it, on a channels_last input (F.pad keeps it; the conv's y and dx
    come back channels_last, as its ops' fakes say, and the compiled graph asserts those
    strides): one graph, outputs and every gradient equal eager's to float32 rounding (Inductor
    fuses the padding and adapter ops around the two opaque conv ops)."""
    layer = _layer(2, 3, 8, 3, dict(padding=1, rank=2), torch.float32)
    x = torch.randn(2, 3, 9, 9).to(memory_format=torch.channels_last).requires_grad_()
    y = torch.compile(layer, fullgraph=True)(x)
    y_eager = layer(x)
    torch.testing.assert_close(y, y_eager)
    for got, want in zip(_grads(layer, x, y), _grads(layer, x, y_eager)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_conv_ops_pass_opcheck(memory_format):
    """Schemas and fakes (shapes, dtypes and strides under FakeTensor, also for a channels_last
    input, which F.pad keeps). The ops have no derivative of their own (SeededConvFunction's)."""
    from lottalora.backbone import BackboneBlock
    from lottalora.ops.custom_ops import block_words

    layer = _layer(2, 4, 6, (2, 3), dict(groups=2, stride=(2, 1)), torch.float32)
    words, geometry = block_words(BackboneBlock.whole(layer.spec)), conv_op.geometry_words(layer.geometry)
    x, beta = torch.randn(2, 4, 7, 8).to(memory_format=memory_format), torch.full((1,), 0.7)
    y = conv_op.seeded_conv_fwd_op(x, beta, words, geometry)
    torch.library.opcheck(conv_op.seeded_conv_fwd_op, (x, beta, words, geometry),
                          test_utils=("test_schema", "test_faketensor"))
    for need_dx, need_dbeta in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(conv_op.seeded_conv_bwd_op,
                              (torch.randn_like(y), x, beta, words, geometry, need_dx, need_dbeta),
                              test_utils=("test_schema", "test_faketensor"))
    assert conv_op.geometry_from_words(geometry) == layer.geometry
    with pytest.raises(ValueError, match="geometry words"):
        conv_op.geometry_from_words(geometry[:-1])


@pytest.mark.parametrize("use_dora", [False, True])
def test_autocast_gives_nn_convs_dtype_and_compiled_calls_eagers_bits(use_dora):
    """Inside torch.autocast the layer returns the autocast dtype as nn.Conv2d does; the seeded
    conv runs on autocast's cast of x with autocast off (float32 accumulation), in eager and
    compiled calls alike, so both give the same bits, close to the float64 reference on the
    cast input."""
    layer = _layer(2, 3, 6, 3, dict(padding=1, use_dora=use_dora), torch.float32)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_compiled = layer(x), compiled(x)
        plain = torch.nn.Conv2d(3, 6, 3, padding=1)(x)
    assert y.dtype == y_compiled.dtype == plain.dtype == torch.bfloat16
    assert torch.equal(y, y_compiled)
    eager_grads = _grads(layer, x, y)  # a backward outside autocast
    for got, want in zip(_grads(layer, x, y_compiled), eager_grads):
        assert torch.equal(got, want)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a backward inside autocast: not recast
        inside = _grads(layer, x, layer(x))
    for got, want in zip(inside, eager_grads):
        assert torch.equal(got, want)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        backbone = conv_op.seeded_conv(layer.pad(x.detach()), layer.spec, layer.geometry, layer.beta)
    ref = conv_op.seeded_conv_ref(layer.pad(x.detach().bfloat16().double()), layer.spec, layer.geometry, layer.beta)
    assert backbone.dtype == torch.float32
    assert_close(backbone, ref, torch.float32, "the backbone conv on autocast's input")


def test_a_gradient_penalty_under_a_dispatch_mode_differentiates_the_conv_again():
    """A dispatch mode (a flop counter's, a debugging one) sends the ops through their registered
    form; a backward that builds a graph still runs the differentiable loops."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class PassThrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    layer = _layer(2, 3, 4, 3, dict(padding=1))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)

    def penalty():
        (dx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
        return torch.autograd.grad(dx.square().sum(), layer.beta)[0]
    want = penalty()
    with PassThrough():
        got = penalty()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_dora_row_norms_apply_to_a_conv_through_its_spec_and_2d_factors():
    from lottalora.ops.dora import weight_row_norms

    layer = _layer(2, 6, 9, (2, 3), dict(groups=3, rank=6))  # lora_B random, beta 0.7
    norms = weight_row_norms(layer.spec, *layer.lora_factors_2d(), layer.beta, layer.scaling)
    dense = layer.backbone_weight(torch.float64) * layer.beta.double() + layer.delta_weight()
    assert_close(norms, dense.flatten(1).norm(dim=1), torch.float64, "row norms")


def test_torch_func_on_the_triton_backend_equals_autograd(monkeypatch):
    """The Triton backend generates W with a kernel launch: inside torch.func.grad / vmap its
    output must be a plain tensor (a functorch wrapper's storage cannot be launched on), for a
    conv's chunks and for a DoRA Linear's row norms made first inside the transform."""
    from torch.func import functional_call, grad, vmap

    monkeypatch.setenv("LOTTALORA_BACKEND", "triton")
    conv = lottalora.Conv2d(3, 4, 3, rank=2, seed=2, use_dora=True)
    dora = lottalora.Linear(12, 10, rank=3, seed=7, init="gaussian", use_dora=True)
    dora.reseed(1000)  # a backbone whose row norms are not cached yet
    for layer, x in ((conv, torch.randn(2, 3, 5, 5)), (dora, torch.randn(3, 12))):
        with torch.no_grad():
            layer.lora_B.normal_()
        params = {name: p.detach() for name, p in layer.named_parameters()}
        grads = grad(lambda p: functional_call(layer, p, (x,)).square().sum())(params)
        layer.zero_grad()
        layer(x).square().sum().backward()
        for name, p in layer.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, msg=f"d{name}")
        per_sample = vmap(grad(lambda p, xi: functional_call(layer, p, (xi[None],)).sum()), in_dims=(None, 0))
        torch.testing.assert_close(per_sample(params, x)["lora_A"].sum(0),
                                   grad(lambda p: functional_call(layer, p, (x,)).sum())(params)["lora_A"])
