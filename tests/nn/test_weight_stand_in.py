"""A seeded layer's ``weight``: the backbone's shape, dtype and device for code that reads them
(transformers' T5 feed-forward does, every forward), and an error for anything that would use
values it does not hold."""

import copy

import pytest
import torch

import lottalora
from lottalora.nn.weight_stand_in import WeightStandIn


@pytest.mark.parametrize("layer,shape", [
    (lambda: lottalora.Linear(8, 6, rank=2, seed=1), (6, 8)),
    (lambda: lottalora.Conv2d(4, 6, 3, groups=2, seed=1), (6, 2, 3, 3)),
])
def test_the_weight_reads_as_the_backbones_shape_dtype_and_device(layer, shape):
    layer = layer()
    w = layer.weight
    assert isinstance(w, torch.Tensor) and not isinstance(w, torch.nn.Parameter)
    assert (tuple(w.shape), w.dtype, w.device, w.dim(), w.numel()) == (shape, torch.float32, torch.device("cpu"),
                                                                      len(shape), torch.Size(shape).numel())
    assert tuple(w.shape) == tuple(layer.backbone_weight().shape)
    assert layer.to(torch.bfloat16).weight.dtype == torch.bfloat16  # made at each read: it follows casts
    assert "weight" not in layer.state_dict() and all(p is not w for p in layer.parameters())
    assert copy.deepcopy(layer).weight.shape == w.shape


@pytest.mark.parametrize("use", [
    lambda w: torch.randn(3, w.shape[1]) @ w.T,
    lambda w: torch.nn.functional.linear(torch.randn(3, w.shape[1]), w),
    lambda w: torch.nn.init.normal_(w),  # an init that would change nothing
    lambda w: w.data.copy_(torch.zeros(w.shape)),
    lambda w: w.T,
    lambda w: w + 1,
    lambda w: w.sum(),
])
def test_using_the_weights_values_raises_by_name(use):
    layer = lottalora.Linear(8, 6, rank=2, seed=1)
    with pytest.raises(RuntimeError, match="seeded layer's weight: the layer stores a seed.*backbone_weight"):
        use(layer.weight)
    assert "backbone_weight() materializes it" in repr(layer.weight)
    w = layer.weight
    assert (w.is_leaf, w.is_nested, w.is_contiguous(), w.stride(), w.nbytes) == (True, False, True, (8, 1), 6 * 8 * 4)


def test_a_compiled_forward_reads_the_weights_dtype_and_device_as_eager_does():
    layer = lottalora.Linear(8, 6, rank=2, seed=1)

    def forward(x):  # T5's feed-forward casts to the output layer's weight dtype; others move to its device
        return layer(x.to(dtype=layer.weight.dtype, device=layer.weight.device))

    x = torch.randn(3, 8, dtype=torch.float64)
    # aot_eager: what is asked is that dynamo traces the reads as eager runs them, not Inductor.
    assert torch.equal(torch.compile(forward, fullgraph=True, backend="aot_eager")(x), forward(x))
    assert isinstance(layer.weight, WeightStandIn)
    with pytest.raises(Exception, match=r"\.T on a seeded layer's weight"):
        torch.compile(lambda x: x @ layer.weight.T, backend="aot_eager")(x)


def test_a_module_reading_the_weights_dtype_exports_and_trains_compiled():
    layer = lottalora.Linear(8, 6, rank=2, seed=1)

    class Reads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x.to(self.layer.weight.dtype))

    x = torch.randn(3, 8)
    for strict in (False, True):  # non-strict export traces with fake tensors, which a subclass cannot wrap
        assert torch.equal(torch.export.export(Reads(), (x,), strict=strict).module()(x), Reads()(x))
    xr = x.clone().requires_grad_()
    torch.compile(Reads(), backend="aot_eager")(xr).sum().backward()
    compiled = layer.lora_A.grad.clone()
    layer.zero_grad()
    Reads()(xr).sum().backward()
    torch.testing.assert_close(compiled, layer.lora_A.grad)


def test_a_converted_t5_runs_generates_and_round_trips(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                   decoder_start_token_id=0, feed_forward_proj="gated-gelu")
    model = lottalora.convert(transformers.T5ForConditionalGeneration(config), rank=2).eval()
    assert "encoder.block.0.layer.1.DenseReluDense.wo" in lottalora.nn.seeded_layers(model)
    ids = torch.randint(1, 64, (2, 7))
    with torch.no_grad():
        logits = model(input_ids=ids, decoder_input_ids=ids).logits  # read self.wo.weight.dtype: it raised
        merged = lottalora.merge_and_unload(copy.deepcopy(model))
        torch.testing.assert_close(merged(input_ids=ids, decoder_input_ids=ids).logits, logits, rtol=1e-5,
                                   atol=1e-5)
    model.save_pretrained(tmp_path / "t5")
    rebuilt = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5")
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(rebuilt.generate(ids, max_new_tokens=4, do_sample=False), generated)


def test_a_model_whose_init_reaches_into_seeded_children_materializes_and_round_trips(tmp_path):
    """CLIP's _init_weights of the root (which owns logit_scale) initializes its projections'
    weights: from_pretrained's materialize ran it and failed on the stand-in."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16, eos_token_id=2)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=8)
    model = lottalora.convert(transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                                             projection_dim=16)), rank=2).eval()
    assert {"text_projection", "visual_projection"} <= set(lottalora.nn.seeded_layers(model))
    with torch.no_grad():
        model.text_projection.lora_B.normal_()
    model.save_pretrained(tmp_path / "clip")
    rebuilt = transformers.AutoModel.from_pretrained(tmp_path / "clip")
    ids, pixels = torch.randint(3, 64, (2, 7)), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(input_ids=ids, pixel_values=pixels).logits_per_image,
                           model(input_ids=ids, pixel_values=pixels).logits_per_image)
