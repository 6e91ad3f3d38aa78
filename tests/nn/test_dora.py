"""lottalora.Linear(use_dora=True) as a layer: its magnitude's init, its forward against PEFT's
DoRA on the dense backbone, and everything around it (state_dict, checkpoints, from_pretrained,
convert, merge, summary, meta, torch.compile, and the refusals by name)."""

import copy

import pytest
import torch
from torch import nn

import lottalora
from lottalora.ops import dora
from tests.support.tolerances import assert_close

peft = pytest.importorskip("peft")


def _dora_layer(in_features=13, out_features=7, **options):
    options = {"rank": 3, "alpha": 4.0, "init": "gaussian", "seed": 3, **options}
    layer = lottalora.Linear(in_features, out_features, use_dora=True, **options)
    with torch.no_grad():  # away from the init, so a lost magnitude, B or beta shows
        for p in layer.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    return layer


def _peft_twin(layer: lottalora.Linear, lora_dropout: float = 0.0):
    """PEFT's DoRA on an nn.Linear holding beta * W_seed, with the layer's A, B, magnitude, bias."""
    dense = nn.Sequential(nn.Linear(layer.in_features, layer.out_features))
    with torch.no_grad():
        dense[0].weight.copy_(layer.beta * layer.backbone_weight())
        dense[0].bias.copy_(layer.bias)
    config = peft.LoraConfig(r=layer.rank, lora_alpha=layer.alpha, use_rslora=layer.use_rslora, use_dora=True,
                             target_modules=["0"], lora_dropout=lora_dropout)
    model = peft.get_peft_model(dense, config)
    twin = model.base_model.model[0]
    with torch.no_grad():
        twin.lora_A["default"].weight.copy_(layer.lora_A)
        twin.lora_B["default"].weight.copy_(layer.lora_B)
        twin.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)
    return model, twin


@pytest.mark.parametrize("init,stream_version", [("gaussian", 1), (None, 2)])
@pytest.mark.parametrize("init_lora_weights", [True, False])
def test_the_magnitude_starts_at_the_row_norms_of_the_adapted_weight(init, stream_version, init_lora_weights):
    layer = lottalora.Linear(21, 9, rank=2, init=init, stream_version=stream_version, use_dora=True,
                             init_lora_weights=init_lora_weights)
    w = layer.backbone_weight().double() + layer.scaling * layer.lora_B.double() @ layer.lora_A.double()
    assert layer.lora_magnitude.shape == (9,) and layer.lora_magnitude.requires_grad
    assert_close(layer.lora_magnitude, torch.linalg.norm(w, dim=1), torch.float32, "initial magnitude")
    if init_lora_weights is True:  # B = 0: DoRA starts as the bare backbone, as PEFT's does
        x = torch.randn(4, 21)
        plain = lottalora.Linear(21, 9, rank=0, init=init, stream_version=stream_version)
        plain.bias = layer.bias
        assert_close(layer(x), plain(x).double(), torch.float32, "DoRA at init")


@pytest.mark.parametrize("use_rslora", [False, True])
def test_the_layer_equals_peft_dora_in_outputs_and_gradients(use_rslora):
    layer = _dora_layer(use_rslora=use_rslora)
    model, twin = _peft_twin(layer)
    x = torch.randn(2, 5, 13)
    x_twin = x.clone().requires_grad_()
    x.requires_grad_()
    y, y_twin = layer(x), model(x_twin)
    dy = torch.randn_like(y)
    y.backward(dy)
    y_twin.backward(dy)
    assert_close(y, y_twin.double(), torch.float32, "y")
    for ours, theirs, what in ((x.grad, x_twin.grad, "dx"), (layer.lora_A.grad, twin.lora_A["default"].weight.grad,
                                                           "dA"),
                               (layer.lora_B.grad, twin.lora_B["default"].weight.grad, "dB"),
                               (layer.lora_magnitude.grad, twin.lora_magnitude_vector["default"].weight.grad, "dm")):
        assert_close(ours, theirs.double(), torch.float32, what)


def test_dropout_follows_peft_in_training_and_is_off_in_eval():
    layer = _dora_layer(lora_dropout=0.4)
    model, _ = _peft_twin(layer, lora_dropout=0.4)
    x = torch.randn(6, 13)
    layer.train()
    torch.manual_seed(7)
    y = layer(x)
    torch.manual_seed(7)  # the same mask, drawn the way the layer draws it
    dropped = nn.functional.dropout(x, 0.4, training=True)
    want = dora.dora_linear(x, layer.spec, layer.lora_A, layer.lora_B, layer.beta, layer.bias, layer.scaling,
                            layer.lora_magnitude, lora_input=dropped)
    assert torch.equal(y, want)
    layer.eval()
    model.eval()
    assert_close(layer(x), model(x).double(), torch.float32, "eval with lora_dropout")


def test_state_dict_round_trip_and_refusals():
    layer = _dora_layer()
    state = layer.state_dict()
    assert "lora_magnitude" in state
    again = lottalora.Linear(13, 7, rank=3, init="gaussian", use_dora=True)
    again.load_state_dict(state)
    x = torch.randn(3, 13)
    assert torch.equal(again(x), layer(x))
    with pytest.raises(RuntimeError, match="lora_magnitude"):
        lottalora.Linear(13, 7, rank=3, init="gaussian").load_state_dict(state)
    bad = {**state, "lora_magnitude": torch.ones(6)}
    with pytest.raises(ValueError, match=r"lora_magnitude has shape \(6,\) in the state_dict, this layer's is \(7,\)"):
        again.load_state_dict(bad)


def test_bad_use_dora_is_refused_by_name():
    with pytest.raises(TypeError, match="use_dora must be a bool, got 1"):
        lottalora.Linear(4, 3, use_dora=1)
    with pytest.raises(ValueError, match=r"use_dora=True needs an adapter \(rank >= 1\)"):
        lottalora.Linear(4, 3, rank=0, use_dora=True)
    with pytest.raises(TypeError, match="use_dora must be a bool"):
        lottalora.convert(nn.Sequential(nn.Linear(4, 3)), use_dora="yes")


def test_named_adapters_stay_lora_and_a_mixed_batch_with_dora_is_refused():
    layer = _dora_layer()
    with pytest.raises(ValueError, match="named DoRA adapters are not supported"):
        layer.add_adapter("other", rank=2, use_dora=True)
    with pytest.raises(ValueError, match="named DoRA adapters are not supported"):
        lottalora.add_adapter(nn.Sequential(layer), "other", rank=2, use_dora=True)
    other = layer.add_adapter("other", rank=2, init_lora_weights=False)
    x = torch.randn(4, 13)
    layer.set_adapter("other")
    want = lottalora.ops.seeded_linear(x, layer.spec, other.lora_A, other.lora_B, layer.beta, layer.bias,
                                       other.scaling)
    assert torch.equal(layer(x), want)  # a named adapter on a DoRA layer is plain LoRA, as in PEFT
    assert layer(x, adapter_names=["other", "__base__", "other", "__base__"]).shape == (4, 7)
    with pytest.raises(ValueError, match="mixed batch.*DoRA"):
        layer(x, adapter_names=["default", "other", "default", "__base__"])
    layer.set_adapter(None)  # disabled: the bare backbone, magnitude and all
    assert torch.equal(layer(x), lottalora.ops.seeded_linear(x, layer.spec, None, None, layer.beta, layer.bias))


def test_merge_and_unload_gives_the_dora_weight():
    model = nn.Sequential(nn.Linear(13, 7), nn.Tanh(), nn.Linear(7, 5))
    lottalora.convert(model, rank=3, use_dora=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    x = torch.randn(4, 13)
    y = model(x)
    merged = lottalora.merge_and_unload(copy.deepcopy(model))
    assert isinstance(merged[0], nn.Linear)
    assert_close(merged(x), y.double(), torch.float32, "merged")
    layer = model[0]
    peft_model, _ = _peft_twin(layer)
    peft_weight = peft_model.merge_and_unload()[0].weight
    assert_close(merged[0].weight, peft_weight.double(), torch.float32, "merged weight vs PEFT's merge")


@pytest.mark.parametrize("init, stream_version", [("gaussian", 1), ("uniform", 1), (None, 2)])
def test_reseed_keeps_the_trained_magnitude_as_each_rows_norm_over_the_new_direction(init, stream_version):
    """Re-drawn, a DoRA layer is DoRA on the new backbone with the trained m: the effective weight's
    rows have norm m (n is the new backbone's, not the old one's cached) and the output is that
    weight's. m is a parameter, kept as every parameter is; it is not re-initialised to n."""
    layer = _dora_layer(in_features=96, out_features=24, init=init, stream_version=stream_version).double()
    magnitude = layer.lora_magnitude.detach().clone()
    x = torch.randn(5, 96, dtype=torch.float64)
    before = layer(x)
    layer.reseed(11)
    weight = lottalora.model.merge.merged_weight(layer)
    torch.testing.assert_close(torch.linalg.vector_norm(weight, dim=1), magnitude, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer(x), x @ weight.T + layer.bias, rtol=1e-12, atol=1e-12)
    assert torch.equal(layer.lora_magnitude, magnitude) and not torch.allclose(layer(x), before)


def test_convert_makes_every_adapted_layer_dora_and_summary_counts_the_magnitudes():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    lottalora.convert(model, rank=2, use_dora=True, adapter_modules=["0"])
    assert model[0].use_dora and model[0].lora_magnitude.requires_grad
    assert not model[2].use_dora  # rank 0: no adapter to rescale
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = lottalora.summary(model)
    assert summary["trainable_params"] == trainable == 2 * (8 + 6) + 6 + 1 + 6 + 1 + 4  # A, B, m, betas, biases
    assert summary["adapter_params"] == 2 * (8 + 6)


def test_save_load_and_adapter_checkpoints_carry_the_magnitude(tmp_path):
    def build(use_dora=True):
        torch.manual_seed(0)
        return lottalora.convert(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)), rank=2,
                                 use_dora=use_dora)

    model = build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    x = torch.randn(3, 8)
    lottalora.save(model, tmp_path / "whole")
    fresh = build()
    lottalora.load(fresh, tmp_path / "whole")
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(ValueError, match=r"layer '0' is not DoRA in the model \(use_dora=False\) but DoRA in the "
                                         r"checkpoint: build the model with use_dora=True"):
        lottalora.load(build(use_dora=False), tmp_path / "whole")
    lottalora.save(build(use_dora=False), tmp_path / "plain")
    with pytest.raises(ValueError, match="is DoRA in the model .* but not DoRA in the checkpoint"):
        lottalora.load(build(), tmp_path / "plain")

    lottalora.save(model, tmp_path / "adapter", adapter="default")
    fresh = build()
    lottalora.load(fresh, tmp_path / "adapter")
    assert torch.equal(fresh[0].lora_magnitude, model[0].lora_magnitude)
    with pytest.raises(ValueError, match="named adapters are plain LoRA"):
        lottalora.load(build(), tmp_path / "adapter", adapter="second")


def test_from_pretrained_rebuilds_a_dora_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tests.support.models import tiny_llama_config

    model = transformers.LlamaForCausalLM(tiny_llama_config())
    lottalora.convert(model, rank=2, target_modules=["q_proj", "v_proj"], use_dora=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p), alpha=0.1)
    model.save_pretrained(tmp_path / "m")
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert rebuilt.model.layers[0].self_attn.q_proj.use_dora
    ids = torch.randint(0, 96, (2, 7))
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, model.eval()(ids).logits)


def test_a_dora_layer_on_meta_gives_meta_outputs_and_materializes_its_magnitude():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(10, 6))
    lottalora.convert(model, rank=2, use_dora=True, init="gaussian")
    y = model(torch.empty(3, 10, device="meta"))
    assert y.device.type == "meta" and y.shape == (3, 6)
    lottalora.materialize(model, "cpu")
    layer = model[0]
    assert_close(layer.lora_magnitude, torch.linalg.norm(layer.backbone_weight().double(), dim=1), torch.float32,
                 "materialized magnitude")


@pytest.mark.parametrize("init", [None, "gaussian"])
def test_torch_compile_matches_eager_forward_and_backward(init):
    """Stream v2's norms trace into one graph; v1 gaussian's cached sums run eagerly (a break)."""
    layer = _dora_layer(init=init)
    compiled = torch.compile(layer, backend="eager", fullgraph=init is None)
    x = torch.randn(4, 13)
    y = layer(x)
    y.sum().backward()
    eager_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    y_compiled = compiled(x)
    y_compiled.sum().backward()
    torch.testing.assert_close(y_compiled, y)
    for p, g in zip(layer.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)


def test_torch_compile_of_several_v1_dora_layers_matches_eager():
    """The graph break at v1's cached sums resumes a frame that recompiles for the next layer's
    seed, and dynamo then hands the op's block words in as SymInts: they are specialized."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16))
    lottalora.convert(model, rank=2, stream_version=1, init="gaussian", use_dora=True, init_lora_weights=False)
    x = torch.randn(3, 16)
    torch.testing.assert_close(torch.compile(model, backend="aot_eager")(x), model(x))


def test_a_gradient_penalty_differentiates_through_dora():
    """Second derivatives: the op's double backward, with the magnitude's scale a plain multiply."""
    layer = _dora_layer().double()
    x = torch.randn(3, 13, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    gx.square().sum().backward()
    assert layer.lora_magnitude.grad is not None and torch.isfinite(layer.lora_magnitude.grad).all()

    def f(inp):
        return layer(inp)

    assert torch.autograd.gradgradcheck(f, (x.detach().requires_grad_(),))


def test_tensor_parallelism_refuses_a_dora_layer_by_name():
    from tests.distributed.launch import run_ranks

    run_ranks("tests.nn.test_dora:_tensor_parallel_refusal", world_size=1, timeout=120)


def _tensor_parallel_refusal(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from lottalora.distributed import ColwiseParallel

    mesh = init_device_mesh("cpu", (world,))
    model = nn.Sequential(lottalora.Linear(8, 4, rank=2, use_dora=True))
    with pytest.raises(ValueError, match=r"tensor parallelism of a DoRA lottalora.Linear \(use_dora=True\) is not"):
        parallelize_module(model, mesh, {"0": ColwiseParallel()})


@pytest.mark.parametrize("value,rank", [(False, 2), ("yes", 2), (True, 0)])
def test_a_checkpoint_whose_use_dora_is_not_a_true_on_an_adapted_layer_is_refused(value, rank, tmp_path):
    from tests.support.checkpoints import edit_config

    model = lottalora.convert(nn.Sequential(nn.Linear(8, 6)), rank=2, use_dora=True)
    lottalora.save(model, tmp_path / "ck")

    def edit(config):
        config["layers"][0]["use_dora"] = value
        if rank == 0:
            config["layers"][0].update(rank=0, alpha=0.0, scaling=0.0)

    edit_config(tmp_path / "ck", edit)
    with pytest.raises(ValueError, match="use_dora is recorded only as true, on a layer of rank >= 1"):
        lottalora.load(model, tmp_path / "ck")
