"""Named adapters on a whole model (a converted LLaMA): add, switch, train one, disable, delete,
mixed batches, and what summary says."""

import pytest
import torch

import lottalora
import lottalora.nn.linear as linear_module
from tests.support.models import LLAMA_ADAPTERS, converted_tiny_llama
from tests.support.tolerances import assert_close

transformers = pytest.importorskip("transformers")


def _adapted():
    torch.manual_seed(0)
    model = converted_tiny_llama().eval()
    lottalora.add_adapter(model, "french", rank=2, alpha=4.0, lora_dropout=0.1)
    lottalora.add_adapter(model, "late", rank=2, layers_to_transform=[1], layers_pattern="layers")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.1)
    return model


def _seeded(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, lottalora.Linear)}


def test_add_adapter_places_it_beside_the_default_one_frozen_and_inactive():
    model = _adapted()
    layers = _seeded(model)
    with_default = {n for n, m in layers.items() if m.rank}
    assert {n for n, m in layers.items() if "french" in m.named_adapters} == with_default
    assert {n for n, m in layers.items() if "late" in m.named_adapters} == {n for n in with_default if ".1." in n}
    assert lottalora.list_adapters(model) == ["default", "french", "late"]
    assert all(m.active_adapter == "default" for m in layers.values())
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_adapters" in n)


def test_set_adapter_switches_the_forward_and_trains_only_that_adapter():
    model = _adapted()
    ids = torch.randint(0, 96, (2, 6))
    with torch.no_grad():
        default = model(ids).logits
    lottalora.set_adapter(model, "french")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    assert trainable and all(".lora_adapters.french." in n for n in trainable)
    with torch.no_grad():
        french = model(ids).logits
    assert not torch.equal(french, default)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = {n: p.clone() for n, p in model.named_parameters()}
    model.train()
    model(ids, labels=ids).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {n for n in changed if "lora_" in n} == trainable  # the default and "late" adapters stay as they were
    lottalora.set_adapter(model, "default")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    assert trainable == {n for n in before if n.endswith(("lora_A", "lora_B")) and "lora_adapters" not in n}


def test_disable_adapter_runs_the_bare_backbones_and_restores_the_active_ones():
    model = _adapted()
    lottalora.set_adapter(model, "late")
    ids = torch.randint(0, 96, (2, 6))
    with torch.no_grad():
        late = model(ids).logits
        with lottalora.disable_adapter(model):
            bare = model(ids).logits
        for m in _seeded(model).values():  # the same model with every adapter term zero
            for name in m.adapter_names():
                m.adapter_parts(name).lora_B.zero_()
        want = model(ids).logits
        assert torch.equal(bare, want)
        with pytest.raises(RuntimeError), lottalora.disable_adapter(model):
            raise RuntimeError
    assert {m.active_adapter for m in _seeded(model).values()} == {"late", None}  # layers without it: backbone
    assert not torch.equal(late, bare)


def test_a_mixed_batch_gives_each_row_what_its_adapter_gives_alone(monkeypatch):
    model = _adapted()
    names = ["french", "__base__", "default", "late", "french"]
    ids = torch.randint(0, 96, (len(names), 6))
    want = []
    with torch.no_grad():
        for i, name in enumerate(names):
            if name == "__base__":
                with lottalora.disable_adapter(model):
                    want.append(model(ids[i:i + 1]).logits)
            else:
                lottalora.set_adapter(model, name)
                want.append(model(ids[i:i + 1]).logits)
        lottalora.set_adapter(model, "default")
        calls = []
        real = linear_module.seeded_linear
        monkeypatch.setattr(linear_module, "seeded_linear", lambda *a, **k: calls.append(1) or real(*a, **k))
        with lottalora.mixed_batch(model, names):
            got = model(ids).logits
    assert len(calls) == len(_seeded(model))  # one backbone product per layer for the whole batch
    for i in range(len(names)):
        assert_close(got[i], want[i][0].double(), torch.float32, f"row {i} ({names[i]})")
    assert not any(m._forward_pre_hooks for m in _seeded(model).values())
    with pytest.raises(ValueError, match=r"names \['spanish'\], which the model does not hold"):
        with lottalora.mixed_batch(model, ["spanish"]):
            pass


def test_delete_adapter_and_summary_list_the_adapters():
    model = _adapted()
    summary = lottalora.summary(model)
    sizes = [(m.in_features, m.out_features) for n, m in _seeded(model).items() if n.endswith(tuple(LLAMA_ADAPTERS))]
    assert summary["adapters"]["default"] == {"layers": 8, "params": sum(4 * (i + o) for i, o in sizes)}
    assert summary["adapters"]["french"] == {"layers": 8, "params": sum(2 * (i + o) for i, o in sizes)}
    assert summary["adapters"]["late"]["layers"] == 4
    assert summary["adapter_params"] == sum(a["params"] for a in summary["adapters"].values())
    assert "adapters: default (8 layers" in str(summary) and "late (4 layers" in str(summary)
    lottalora.set_adapter(model, "late")  # the only adapter that trains
    lottalora.delete_adapter(model, "late")
    assert lottalora.list_adapters(model) == ["default", "french"]
    assert {m.active_adapter for m in _seeded(model).values()} == {"default", None}
    # The default took over as set_adapter makes it, training (it ran frozen, as PEFT's does not).
    layers = [m for m in _seeded(model).values() if m.rank]
    assert all(m.lora_A.requires_grad and m.lora_B.requires_grad for m in layers)
    assert not any(p.requires_grad for m in layers for p in m.adapter_parameters("french"))
    with pytest.raises(ValueError, match="cannot be deleted"):
        lottalora.delete_adapter(model, "default")
    with pytest.raises(ValueError, match="no adapter 'late'"):
        lottalora.set_adapter(model, "late")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(seed=3), TypeError, r"add_adapter\(\) got \['seed'\]: convert options of the backbones"),
    (dict(trainable_modules=["norm"]), TypeError, "convert options of the backbones"),
    (dict(ranks=3), TypeError, "unexpected keyword arguments"),
    (dict(target_modules=["nothing"]), ValueError, "matched no seeded layer"),
    (dict(init_lora_weights="pissa"), ValueError, "no pretrained W0"),
    (dict(rank=3, init_lora_weights="orthogonal"), ValueError, "needs even ranks"),
    (dict(target_modules=r".*q_proj", layers_to_transform=[0]), ValueError, "need target_modules as a list"),
    (dict(rank_pattern={"q_porj": 4}), ValueError, "rank_pattern key 'q_porj' matches none of the selected layers"),
    (dict(alpha_pattern={"gate_proj": 2.0}), ValueError, "alpha_pattern key 'gate_proj' matches none"),
])
def test_bad_add_adapter_arguments_are_named_and_change_nothing(kwargs, error, match):
    model = converted_tiny_llama()
    before = list(model.state_dict())
    with pytest.raises(error, match=match):
        lottalora.add_adapter(model, "x", **kwargs)
    assert list(model.state_dict()) == before
    with pytest.raises(ValueError, match="already has an adapter 'default'"):
        lottalora.add_adapter(model, "default")


def test_set_adapter_freezes_a_dora_layers_magnitude_with_its_default_adapter():
    """The magnitude belongs to the default (DoRA) adapter: it trains when the default adapter
    does and is frozen with it, as PEFT freezes its magnitude vector."""
    layer = lottalora.Linear(12, 8, rank=2, use_dora=True)
    model = torch.nn.Sequential(layer)
    lottalora.add_adapter(model, "other", rank=2)
    lottalora.set_adapter(model, "other")
    assert not layer.lora_magnitude.requires_grad and not layer.lora_A.requires_grad
    lottalora.set_adapter(model, "default")
    assert layer.lora_magnitude.requires_grad and layer.lora_A.requires_grad
