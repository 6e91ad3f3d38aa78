"""Run by tests/kernels/test_launch.py in a process without TRITON_INTERPRET: launches through
``lottalora_kernels.launch`` and through Triton, recorded on a fake CUDA driver, printed as JSON.

    python -m tests.support.launch_probe
"""

from __future__ import annotations

import json
import os

import torch
import triton
import triton.language as tl

from lottalora_kernels import launch as launch_module
from lottalora_kernels.seeded_linear.epilogue import seeded_epilogue
from lottalora_kernels.tools.fake_cuda import fake_cuda, recording


@triton.jit
def _scaled_copy_kernel(x_ptr, out_ptr, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) * scale, mask=mask)


def _normalized(launch, exact_pointers: bool):
    name, grid, stream, function, args = launch
    args = [list(a[1:]) if isinstance(a, tuple) and a and a[0] == "tensor" else a for a in args]
    if not exact_pointers:  # a tensor's address modulo 16 (what Triton specializes on), dtype and shape
        args = [[a[0] % 16, str(a[1]), a[2]] if isinstance(a, list) else a for a in args]
    return [name, list(grid), stream, function, [str(a) if isinstance(a, list) else a for a in args]]


def _record(calls, direct: bool, exact_pointers: bool = True) -> list:
    """Each call's launches, with launch._DIRECT set to ``direct``; direct calls are made twice
    and the second (cached) launches are the ones returned."""
    launch_module._DIRECT = direct
    out = []
    for call in calls:
        if direct:
            call()
        with recording() as launches:
            call()
        out.append([_normalized(x, exact_pointers) for x in launches])
    return out


def epilogue_calls() -> list:
    """Epilogue launches that Triton specializes differently: dtypes, a misaligned output, M = 1,
    no bias, no LoRA; then the first again."""
    def case(dtype, m=37, n=150, misaligned=False, bias=True, lora=True):
        acc = torch.randn(m, n)
        out = torch.empty(m, n + 1, dtype=dtype)[:, 1:] if misaligned else torch.empty(m, n, dtype=dtype)
        lo, lmat = torch.randn(m, 8, dtype=dtype), torch.randn(n, 8, dtype=dtype)
        b = torch.zeros(n, dtype=dtype) if bias else None
        beta = torch.ones(1)
        return lambda: seeded_epilogue(acc, out, beta=beta, value_scale=0.5, lo=lo if lora else None,
                                       lmat=lmat if lora else None, lora_scale=0.25, bias=b)
    first = case(torch.bfloat16)
    return [first, case(torch.float16), case(torch.float32), case(torch.bfloat16, misaligned=True),
            case(torch.bfloat16, m=1), case(torch.bfloat16, bias=False), case(torch.bfloat16, lora=False), first]


def scalar_calls() -> list:
    """A float parameter given an int, a float, and 1 (which Triton makes a constant)."""
    x, out = torch.randn(100), torch.empty(100)
    return [lambda s=s: launch_module.launch(_scaled_copy_kernel, (2,), x, out, 100, s, BLOCK=64)
            for s in (2, 2.0, 1, 3, 3.0, 2)]


def alignment_and_constexpr_calls() -> list:
    """Launches that differ only in an output's alignment (same strides: Triton vectorizes an
    aligned one), or only in a constexpr, or only in a do-not-specialize seed word."""
    buf, x = torch.empty(1025), torch.randn(1024)
    aligned, misaligned = buf[:1024], buf[1:]

    def copy(out, block):
        return lambda: launch_module.launch(_scaled_copy_kernel, (1,), x, out, 1024, 2.0, BLOCK=block,
                                            num_warps=1)
    return [copy(aligned, 1024), copy(misaligned, 1024), copy(aligned, 1024), copy(aligned, 512),
            copy(aligned, 1024)]


def gluon_calls() -> list:
    """The Gluon fast paths (forced: their default needs CUDA tensors): the v2 generator and the
    decode kernel in both directions, at two seeds (do-not-specialize words)."""
    from lottalora_kernels.backbone_gen import generate_backbone
    from lottalora_kernels.seeded_linear.decode import _partial_products

    calls = []
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(3, 256, dtype=dtype)
        for seed in (7, 2**40 + 3):
            calls.append(lambda seed=seed, dtype=dtype: generate_backbone(
                seed, 5, 256, "rademacher", (0, 192), (0, 256), "cpu", version=2, dtype=dtype, signs=True,
                fast=True))
            for transposed in (False, True):
                calls.append(lambda seed=seed, x=x, transposed=transposed: _partial_products(
                    x, transposed=transposed, n_out=192, seed=seed, stream=5, fast=True, num_warps=4, split_k=2))
    return calls


def keyword_calls() -> list:
    """Runtime parameters given by keyword (a tensor among them): launched through Triton."""
    x, out = torch.randn(100), torch.empty(100)
    return [lambda s=s: launch_module.launch(_scaled_copy_kernel, (2,), x, out_ptr=out, n=100, scale=s, BLOCK=64)
            for s in (2.0, 5.0)]


def layer_calls(inference: bool = False) -> list:
    """Eager forward + backward of a seeded bf16 layer in the decode (M = 1) and two-phase
    (M = 64) regimes, through the Triton backend (on the fake driver); with ``inference``, each
    followed by a forward without a gradient (a plan without an autograd node)."""
    import lottalora
    from lottalora.ops import checks

    checks.resolve_backend = lambda device: "triton"
    layer = lottalora.Linear(256, 192, rank=8, alpha=4, seed=3).to(torch.bfloat16)
    calls = []
    for m in (1, 64):
        x = torch.randn(m, 256, dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn(m, 192, dtype=torch.bfloat16)
        calls.append(lambda x=x, dy=dy: torch.autograd.backward(layer(x), dy))
        if inference:
            calls.append(lambda x=x: layer(x.detach()))
    return calls


def one_pass_layer_calls() -> list:
    """``layer_calls`` with the one-pass regime switched on, at M = 1 and 64, then forward +
    backward of a column-parallel rank's block (rows 64-160 of such a layer, M = 64): a call's
    second run (the one recorded in direct mode) replays its eager plan's bound launches."""
    from lottalora.backbone import BackboneSpec
    from lottalora.ops import seeded_linear_shard

    os.environ["LOTTALORA_ONE_PASS"] = "1"
    spec = BackboneSpec(3, 9, 256, 192)
    a = torch.randn(8, 256, dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(96, 8, dtype=torch.bfloat16, requires_grad=True)
    beta = torch.ones(1, dtype=torch.bfloat16, requires_grad=True)
    x = torch.randn(64, 256, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(64, 96, dtype=torch.bfloat16)

    def block_step():
        torch.autograd.backward(seeded_linear_shard(x, spec, (64, 160), (0, 256), a, b, beta, None, 0.5), dy)
    return [*layer_calls(inference=True), block_step]


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
    os.environ["LOTTALORA_POISON_OUTPUTS"] = "0"
    torch.manual_seed(0)
    result = {}
    with fake_cuda():
        def copy_kernel_entries():
            return sum(len(c.entries) for k, c in launch_module._CACHES.values() if k is _scaled_copy_kernel)
        for name, calls, exact in (("epilogue", epilogue_calls(), True), ("scalars", scalar_calls(), True),
                                   ("alignment_constexpr", alignment_and_constexpr_calls(), True),
                                   ("gluon", gluon_calls(), False), ("keywords", keyword_calls(), True),
                                   ("layer", layer_calls(), False)):
            entries = copy_kernel_entries()
            result[name] = {"triton": _record(calls, direct=False, exact_pointers=exact),
                            "direct": _record(calls, direct=True, exact_pointers=exact)}
            if name == "keywords":
                result["keyword_entries"] = copy_kernel_entries() - entries
        from lottalora.ops import eager

        result["one_pass_layer"] = {"triton": _record(one_pass_layer_calls(), direct=False, exact_pointers=False),
                                    "direct": _record(one_pass_layer_calls(), direct=True, exact_pointers=False)}
        from lottalora_kernels.seeded_linear.decode import DecodeForwardReplay
        from lottalora_kernels.seeded_linear.one_pass import ForwardReplay

        def direct_plans(kind, bound_of):
            return sum(1 for plan in eager._PLANS.values() if isinstance(getattr(plan, "forward", None), kind)
                       and bound_of(plan.forward).compiled is not None)
        result["one_pass_plans"] = direct_plans(ForwardReplay, lambda f: f.replay.bound)
        result["decode_plans"] = direct_plans(DecodeForwardReplay, lambda f: f.products)
        os.environ["LOTTALORA_ONE_PASS"] = "0"
        from lottalora_kernels.backbone_gen import _backbone_gen_v2_kernel
        result["generator_entries"] = sum(len(c.entries) for k, c in launch_module._CACHES.values()
                                          if k is _backbone_gen_v2_kernel)
        # With a launch hook registered, launches go through Triton, which calls it.
        seen = []
        hook = triton.knobs.runtime.launch_enter_hook
        hook.add(seen.append)
        try:
            launch_module._DIRECT = True
            scalar_calls()[0]()
        finally:
            hook.remove(seen.append)
        result["hook_calls"] = len(seen)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
