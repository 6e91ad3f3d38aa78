"""lottalora.reseed and ScaffoldSchedule: the backbone changes; parameters, streams and the
optimizer's state do not."""

import dataclasses

import pytest
import torch
from torch import nn

import lottalora
from lottalora.model.scaffold import scaffold_seed


def _mlp(seed: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(lottalora.Linear(12, 16, rank=2, seed=seed, stream=0), nn.ReLU(),
                         lottalora.Linear(16, 8, rank=0, seed=seed, stream=1), nn.ReLU(), nn.Linear(8, 3))


def _seeded(model: nn.Module) -> list[lottalora.Linear]:
    return [m for m in model.modules() if isinstance(m, lottalora.Linear)]


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(10, 12, generator=gen), torch.randint(0, 3, (10,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_reseed_redraws_every_backbone_and_touches_nothing_else():
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train_steps(model, opt)
    params_before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    opt_state_before = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                        for p, s in opt.state.items()}
    specs_before = [layer.spec for layer in _seeded(model)]
    weights_before = [layer.backbone_weight() for layer in _seeded(model)]

    assert lottalora.reseed(model, 2**63 + 5) is model

    for layer, spec, w in zip(_seeded(model), specs_before, weights_before, strict=True):
        assert layer.spec == dataclasses.replace(spec, seed=2**63 + 5)  # stream, init, version, shape kept
        assert not torch.equal(layer.backbone_weight(), w)
    for n, p in model.named_parameters():
        same_object, value = params_before[n]
        assert p is same_object and torch.equal(p, value)
    assert opt.param_groups[0]["params"] == [p for p, _ in params_before.values()]
    for p, state in opt.state.items():
        for k, v in state.items():
            assert torch.equal(v, opt_state_before[id(p)][k]) if torch.is_tensor(v) else v == opt_state_before[id(p)][k]
    _train_steps(model, opt, steps=1)  # the optimizer goes on with the same parameters


def test_reseed_changes_outputs_and_back_again():
    model = _mlp(seed=3)
    x = torch.randn(4, 12)
    with torch.no_grad():
        with_nonzero_b = _seeded(model)[0]
        with_nonzero_b.lora_B.normal_()
        before = model(x)
        lottalora.reseed(model, 4)
        after = model(x)
        lottalora.reseed(model, 3)
        again = model(x)
    assert not torch.allclose(before, after) and torch.equal(before, again)


def test_reseed_one_layer_and_the_state_dict_carries_the_new_seed():
    layer = lottalora.Linear(9, 5, rank=1, seed=1, stream=7)
    lottalora.reseed(layer, 11)
    assert (layer.seed, layer.stream) == (11, 7)
    fresh = lottalora.Linear(9, 5, rank=1, seed=1, stream=7)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.seed == 11 and torch.equal(fresh.backbone_weight(), layer.backbone_weight())


@pytest.mark.parametrize("module,seed,error,match", [
    (lottalora.Linear(4, 4), -1, ValueError, "seed"),
    (lottalora.Linear(4, 4), 2**64, ValueError, "seed"),
    (lottalora.Linear(4, 4), 1.5, TypeError, "seed"),
    (nn.Linear(4, 4), 1, ValueError, "no lottalora.Linear"),
    ("not a module", 1, TypeError, "module"),
])
def test_bad_reseed_arguments_are_named(module, seed, error, match):
    with pytest.raises(error, match=match):
        lottalora.reseed(module, seed)


def test_a_bad_seed_changes_no_layer():
    model = _mlp(seed=3)
    with pytest.raises(ValueError):
        lottalora.reseed(model, -1)
    assert [layer.seed for layer in _seeded(model)] == [3, 3]


def test_schedule_every_epoch_gives_a_new_scaffold_each_epoch():
    model = _mlp(seed=3)
    schedule = lottalora.ScaffoldSchedule(model, every="epoch")
    seen = []
    for _ in range(4):
        seen.append(_seeded(model)[0].seed)
        for _ in range(3):
            schedule.step()  # not a step schedule: nothing changes inside an epoch
            assert _seeded(model)[0].seed == seen[-1]
        schedule.epoch_end()
    assert seen == [scaffold_seed(3, i) for i in range(4)] == [3, 4, 5, 6]
    assert all(layer.seed == 7 for layer in _seeded(model)) and schedule.redraws == 4


def test_schedule_every_step_cycles_among_k_scaffolds():
    model = _mlp(seed=10)
    schedule = lottalora.ScaffoldSchedule(model, every="step", num_scaffolds=3, base_seed=100)
    seeds = [_seeded(model)[1].seed]
    for _ in range(6):
        schedule.step()
        schedule.epoch_end()  # not an epoch schedule
        seeds.append(_seeded(model)[1].seed)
    assert seeds == [100, 101, 102, 100, 101, 102, 100]
    assert schedule.scaffold == 0 and schedule.redraws == 6


def test_schedule_with_one_scaffold_is_static_and_resumes_from_its_state():
    model = _mlp(seed=3)
    static = lottalora.ScaffoldSchedule(model, every="step", num_scaffolds=1)
    static.step()
    assert static.seed == 3 and _seeded(model)[0].seed == 3

    schedule = lottalora.ScaffoldSchedule(model, every="epoch", num_scaffolds=5)
    for _ in range(7):
        schedule.epoch_end()
    resumed = lottalora.ScaffoldSchedule(_mlp(seed=3), every="epoch", num_scaffolds=5)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.seed == schedule.seed == 5 and _seeded(resumed.module)[0].seed == 5
    with pytest.raises(ValueError, match="num_scaffolds"):
        lottalora.ScaffoldSchedule(_mlp(), num_scaffolds=2).load_state_dict(schedule.state_dict())


@pytest.mark.parametrize("kwargs,match", [
    (dict(every="batch"), "every"), (dict(num_scaffolds=0), "num_scaffolds"),
    (dict(base_seed=-2), "base_seed"),
])
def test_bad_schedule_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lottalora.ScaffoldSchedule(_mlp(), **kwargs)


def test_schedule_needs_a_base_seed_when_layers_differ():
    model = nn.Sequential(lottalora.Linear(4, 4, seed=1), lottalora.Linear(4, 4, seed=2, stream=1))
    with pytest.raises(ValueError, match="pass base_seed"):
        lottalora.ScaffoldSchedule(model)
    lottalora.ScaffoldSchedule(model, base_seed=9)
    assert [layer.seed for layer in model] == [9, 9]


def test_a_compiled_model_follows_the_redraws():
    model = _mlp(seed=3)
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(2, 12)
    schedule = lottalora.ScaffoldSchedule(model, every="step", num_scaffolds=2)
    for _ in range(3):
        with torch.no_grad():
            assert torch.equal(compiled(x), model(x))
        schedule.step()
