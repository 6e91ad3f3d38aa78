"""FSDP2 on 2 CPU ranks (gloo): fully_shard takes a converted model as it is, training equals
single-process training, every collective is an all-gather or reduce-scatter of parameters
(never a backbone), and lottalora.save / load work on the sharded model. Functions starting
with _ run on every rank (tests/distributed/launch.py)."""

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import lottalora
from tests.distributed.launch import run_ranks

pytest.importorskip("transformers")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint_v1"


def _group_sizes(model, world):
    """For each FSDP2 module: (padded numel of all its own parameters, of its trainable ones), as
    its all-gather and reduce-scatter see them (dim 0 padded to a multiple of the ranks)."""
    from torch.distributed.fsdp import FSDPModule

    sizes = []
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        nested = {id(p) for sub in module.modules() if sub is not module and isinstance(sub, FSDPModule)
                  for p in sub.parameters()}
        own = [p for p in module.parameters() if id(p) not in nested]

        def padded(p):
            return math.ceil(p.shape[0] / world) * world * math.prod(p.shape[1:])

        sizes.append((sum(padded(p) for p in own), sum(padded(p) for p in own if p.requires_grad)))
    return sizes


def _fully_shard_llama(model) -> None:
    """fully_shard each decoder layer, then the root (FSDP2's usual wrapping)."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)


def _fsdp2_trains_like_one_process_and_checkpoints(rank, world, directory):
    from safetensors.torch import load_file
    from torch.distributed.fsdp import fully_shard

    from lottalora.distributed import CollectiveCounter
    from tests.support.models import converted_tiny_llama

    torch.manual_seed(0)
    ref = converted_tiny_llama()
    model = copy.deepcopy(ref)
    _fully_shard_llama(model)  # every decoder layer and the root: the converted model, unchanged
    sizes = _group_sizes(model, world)
    betas = lottalora.summary(model)["betas"]  # no collective: rank 0 holds each 1-element beta
    assert all((b == 1.0) if rank == 0 else math.isnan(b) for b in betas.values()) and len(betas) == 14
    ids = torch.randint(0, 96, (4, 10), generator=torch.Generator().manual_seed(1))
    mine = ids[rank * 2:(rank + 1) * 2]  # each rank its half of the batch
    # SGD: Adam divides by the gradients' size, which turns fp32 rounding in near-zero gradient
    # elements into O(lr) differences that say nothing about FSDP.
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    opt_ref = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        counter = CollectiveCounter()
        with counter:
            model(mine, labels=mine).loss.backward()
        ref(ids, labels=ids).loss.backward()
        for (name, p), p_ref in zip(model.named_parameters(), ref.parameters(), strict=True):
            if p_ref.grad is not None:
                torch.testing.assert_close(p.grad.full_tensor(), p_ref.grad, rtol=1e-5, atol=1e-7,
                                           msg=lambda m, name=name: f"grad of {name}: {m}")
        for optimizer in (opt, opt_ref):
            optimizer.step()
            optimizer.zero_grad()
        assert {kind for kind, *_ in counter.ops} == {"all_gather", "reduce_scatter"}, counter.ops
        gathered = [numel for kind, _, _, numel in counter.ops if kind == "all_gather"]
        reduced = [numel for kind, _, _, numel in counter.ops if kind == "reduce_scatter"]
        # Each collective carries exactly one FSDP group's parameters (or their gradients): the
        # backbones are not parameters, so they are never among them.
        assert set(gathered) <= {s for s, _ in sizes} and set(reduced) <= {t for _, t in sizes}, (counter.ops, sizes)
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.full_tensor(), p_ref, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")

    lottalora.save(model, directory)  # every rank: the shards are gathered, rank 0 writes
    plain = converted_tiny_llama()
    lottalora.load(plain, directory)
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p.full_tensor(), q), name
    fresh = converted_tiny_llama()
    _fully_shard_llama(fresh)
    lottalora.load(fresh, directory)  # every rank reads the files and keeps its shards
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)

    # The Trainer under FSDP's full state dict (accelerate's get_state_dict): every rank takes it,
    # the main process alone saves it through save_pretrained, with no collective of its own.
    import transformers
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        model.save_pretrained(f"{directory}-trainer", state_dict=full)
        rebuilt = transformers.AutoModelForCausalLM.from_pretrained(f"{directory}-trainer")
        with torch.no_grad():
            assert torch.equal(rebuilt(ids).logits, plain(ids).logits)
    torch.distributed.barrier()

    # GPT-2's tied head and embedding: stored once, and the model rebuilt from the directory alone.
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = lottalora.convert(GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50,
                                                        n_positions=16)), rank=2, trainable_modules=["wte"]).eval()
    with torch.no_grad():
        want = gpt2(ids % 50).logits
    for block in gpt2.transformer.h:
        fully_shard(block)
    fully_shard(gpt2)
    lottalora.save(gpt2, f"{directory}-gpt2")
    rebuilt = lottalora.from_pretrained(f"{directory}-gpt2")
    assert rebuilt.lm_head.weight is rebuilt.transformer.wte.weight
    with torch.no_grad():
        assert torch.equal(rebuilt(ids % 50).logits, want)

    # A checkpoint from lottalora 0.1 (0-dim betas) loads into a sharded model.
    old = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 6))
    lottalora.convert(old, rank=2, seed=1, target_modules=["0"])
    lottalora.convert(old, rank=3, seed=1, target_modules=["2"])
    fully_shard(old)
    lottalora.load(old, FIXTURES)
    expected = load_file(str(FIXTURES / "expected_outputs.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(old(expected["x"]), expected["y"], rtol=1e-6, atol=1e-6)


def test_fsdp2_training_equals_one_process_and_sharded_checkpoints_round_trip(tmp_path):
    run_ranks("tests.distributed.test_state:_fsdp2_trains_like_one_process_and_checkpoints",
              args=[str(tmp_path / "ck")], timeout=300)
