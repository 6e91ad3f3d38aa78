"""Generation end to end: a seed-only LLaMA against the same model with stored weights.

For each shape (``harness.llama_shapes``: on a GPU the Llama-3.2-1B and Llama-3-8B shapes, with
``--stretch`` Llama-3-70B's; on the CPU small ones), greedy ``generate`` of ``--new`` tokens
after a ``--prompt``-token random prompt, at each batch size, for three variants built the same
way from a config:
- ``seeded``: ``lottalora.convert(target_modules="all-linear")``, every decoder linear a seed
  and a rank-8 adapter filled with random values (the speed does not depend on training);
- ``bf16``: the same shape with its linear weights stored as bf16 ``nn.Linear`` (random values:
  a stored weight's speed does not depend on them);
- ``int4``: those stored weights quantized to int4 (groups of 128) and multiplied by torch's own
  int4 weight-only kernel (``harness.int4``; skipped, with the reason, where torch has none).
The head and the embeddings are stored bf16 in all three. Two modes: ``eager`` (transformers'
dynamic cache, nothing compiled) and ``compiled`` (a static KV cache and the decode step compiled
by transformers with ``torch.compile(mode="reduce-overhead", fullgraph=True)``: CUDA graphs on
a GPU; inductor alone on the CPU). Per row: ``tokens_per_s`` (batch x new tokens over the whole
``generate``, prefill included), ``decode_tokens_per_s`` (the tokens after the first over the time
after the first), ``peak_bytes`` (GPU: ``torch.cuda.max_memory_allocated`` during the timed
generate; CPU: the resident high-water mark during it above the process before the model was
built) and ``model_bytes`` (parameters and buffers). Each row is written to --out as soon as it
is measured.

    python -m benchmarks.generate                 # GPU: 1B and 8B shapes; CPU: the 35M shape
    python -m benchmarks.generate --stretch       # also the 70B shape (GPU)
    python -m benchmarks.generate --quick         # a micro shape, a few tokens, eager (CI)
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .harness import rss
from .harness.int4 import int4_available, quantize_linears
from .harness.llama_shapes import (
    build_seeded,
    build_stored,
    cache_keyword,
    contiguous_head_input,
    held_bytes,
    linear_params,
)
from .harness.results import RESULTS_DIR, write_results
from .harness.script import add_machine_arguments, pick_device

VARIANTS = ("seeded", "bf16", "int4")
MODES = ("eager", "compiled")
GPU_SHAPES, STRETCH_SHAPES, CPU_SHAPES, QUICK_SHAPES = ["1B", "8B"], ["70B"], ["35M"], ["micro"]
BATCHES = (1, 16)
MIB = 2**20


def build(shape: str, variant: str, device: torch.device) -> torch.nn.Module:
    """Shape ``shape`` in ``variant``, bf16 on ``device``, every parameter frozen (as for inference)
    and the head's input made contiguous (``contiguous_head_input``)."""
    if variant == "seeded":
        model = build_seeded(shape, torch.bfloat16, device)
    else:
        model = build_stored(shape, torch.bfloat16, device)
        if variant == "int4":
            quantize_linears(model)
    model.requires_grad_(False)
    return contiguous_head_input(model)


def stored_bytes(shape: str) -> int:
    """Bytes of the stored bf16 model's weights: the linears, the embeddings and the head."""
    from .harness.llama_shapes import SHAPES

    hidden, vocab = SHAPES[shape][0], SHAPES[shape][5]
    return 2 * (linear_params(shape) + 2 * vocab * hidden)


def skip_reason(shape: str, variant: str, device: torch.device) -> str | None:
    """Why ``variant`` of ``shape`` is not run here, or None: torch's int4 kernel missing, or a
    stored model (built in bf16 first) larger than nine tenths of the device's memory."""
    if variant == "int4" and int4_available(device) is not None:
        return int4_available(device)
    if variant == "seeded":
        return None
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        import os

        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if stored_bytes(shape) > 0.9 * total:
        return f"its bf16 weights ({stored_bytes(shape) / 2**30:.0f} GiB) do not fit ({total / 2**30:.0f} GiB)"
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generate_call(model, mode: str, prompt: int, new_tokens: int, device: torch.device):
    """A function (ids, new) -> tokens running ``generate`` the way ``mode`` says."""
    from transformers import CompileConfig, StaticCache

    options = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    if mode == "eager":
        options["disable_compile"] = True
    else:
        compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead")
        compile_config._compile_all_devices = device.type != "cuda"  # transformers' switch for the CPU
        # One static cache for every call: a new length would be a new graph to compile.
        cache = StaticCache(config=model.config, max_cache_len=prompt + new_tokens)
        options["compile_config"] = compile_config

    def call(ids, new):
        extra = {}
        if mode != "eager":
            cache.reset()
            extra[cache_keyword()] = cache
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                              **options, **extra)
    return call


def _timed(call, ids, new: int, device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = call(ids, new)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def measure(model, shape: str, variant: str, mode: str, batch: int, prompt: int, new_tokens: int,
            device: torch.device, repeats: int, baseline_bytes: int) -> dict:
    """One row: ``generate`` of ``model`` timed (after a warm-up call) and its peak memory."""
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, prompt), generator=torch.Generator().manual_seed(batch)).to(device)
    call = _generate_call(model, mode, prompt, new_tokens, device)
    with torch.inference_mode():
        call(ids, new_tokens)  # warm-up: kernels, compilation, CUDA graphs
        first_s, _ = _timed(call, ids, 1, device, repeats)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            rss.resident_bytes()  # what the warm-up freed goes back first, so the mark starts at what is held
            rss.reset_peak()
        total_s, out = _timed(call, ids, new_tokens, device, repeats)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak_bytes() - baseline_bytes
    assert out.shape == (batch, prompt + new_tokens), out.shape
    return {
        "shape": shape, "variant": variant, "mode": mode, "batch": batch, "prompt_tokens": prompt,
        "new_tokens": new_tokens, "generate_s": total_s, "first_token_s": first_s,
        "tokens_per_s": batch * new_tokens / total_s,
        "decode_tokens_per_s": batch * (new_tokens - 1) / max(total_s - first_s, 1e-9),
        "peak_bytes": peak, "model_bytes": held_bytes(model), "linear_params": linear_params(shape),
    }


def table(rows: list[dict]) -> str:
    lines = ["| shape | variant | mode | batch | tokens/s | decode tokens/s | peak MiB | model MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['shape']} | {r['variant']} | {r['mode']} | | skipped: {r['skipped']} | | | |")
            continue
        lines.append(f"| {r['shape']} | {r['variant']} | {r['mode']} | {r['batch']} | {r['tokens_per_s']:,.1f} | "
                     f"{r['decode_tokens_per_s']:,.1f} | {r['peak_bytes'] / MIB:,.1f} | "
                     f"{r['model_bytes'] / MIB:,.1f} |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[dict]:
    """seeded tokens/s over each stored variant's, per shape, mode and batch."""
    measured = {(r["shape"], r["variant"], r["mode"], r["batch"]): r for r in rows if "skipped" not in r}
    out = []
    for (shape, variant, mode, batch), r in measured.items():
        if variant == "seeded":
            for other in ("bf16", "int4"):
                base = measured.get((shape, other, mode, batch))
                if base:
                    out.append({"shape": shape, "mode": mode, "batch": batch, "against": other,
                                "tokens_per_s_ratio": r["tokens_per_s"] / base["tokens_per_s"],
                                "peak_bytes_ratio": r["peak_bytes"] / base["peak_bytes"]})
    return out


def plot(rows: list[dict], path: Path, device_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "skipped" not in r]
    groups = sorted({(r["shape"], r["mode"], r["batch"]) for r in rows},
                    key=lambda g: (linear_params(g[0]), MODES.index(g[1]), g[2]))
    shapes = sorted({r["shape"] for r in rows}, key=linear_params)
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(VARIANTS)
    for i, variant in enumerate(VARIANTS):
        by = {(r["shape"], r["mode"], r["batch"]): r for r in rows if r["variant"] == variant}
        xs = [g for g in range(len(groups)) if groups[g] in by]
        speed.bar([x + (i - 1) * width for x in xs], [by[groups[x]]["tokens_per_s"] for x in xs], width, label=variant)
        peaks = {r["shape"]: max(q["peak_bytes"] for q in rows if q["variant"] == variant and q["shape"] == r["shape"])
                 for r in by.values()}
        ms = [s for s in range(len(shapes)) if shapes[s] in peaks]
        memory.bar([m + (i - 1) * width for m in ms], [peaks[shapes[m]] / MIB for m in ms], width, label=variant)
    speed.set_xticks(range(len(groups)), [f"{s}\n{m}\nbatch {b}" for s, m, b in groups], fontsize=8)
    speed.set_yscale("log")
    speed.set_ylabel("tokens/s (greedy generate)")
    speed.set_title(f"generate, {device_name}")
    speed.legend()
    memory.set_xticks(range(len(shapes)), shapes)
    memory.set_ylabel("peak MiB (largest batch)")
    memory.set_title("peak memory")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a micro shape, a few tokens, eager only (CI)")
    parser.add_argument("--stretch", action="store_true", help="also the Llama-3-70B shape")
    parser.add_argument("--shapes", nargs="+", help="shapes to run (default: by device)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--modes", nargs="+", choices=MODES, help="default: both (eager only with --quick)")
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="new tokens")
    parser.add_argument("--repeats", type=int, default=None, help="timed generates per row (median)")
    add_machine_arguments(parser)
    args = parser.parse_args(argv)
    device, kind = pick_device(args)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else GPU_SHAPES if kind == "gpu" else CPU_SHAPES)
    if args.stretch and not args.shapes:
        shapes = shapes + STRETCH_SHAPES
    modes = args.modes or (["eager"] if args.quick else list(MODES))
    prompt, new_tokens = (8, 4) if args.quick else (args.prompt, args.new)
    repeats = args.repeats or (1 if args.quick or kind == "cpu" else 3)
    out_dir = args.out or (Path(tempfile.mkdtemp()) if args.quick else RESULTS_DIR)
    name = f"generate_{kind}"
    device_name = torch.cuda.get_device_name(device) if kind == "gpu" else None
    notes = (f"Greedy generate, {prompt} prompt tokens, {new_tokens} new, bf16; seeded = lottalora.convert("
             "target_modules='all-linear') with random rank-8 adapters; bf16 = the same shape stored as nn.Linear; "
             "int4 = torch._weight_int4pack_mm (groups of 128); the head stored bf16 in all, its input made "
             "contiguous (harness.llama_shapes.contiguous_head_input); all frozen. compiled = static "
             "cache + torch.compile(mode='reduce-overhead', fullgraph=True) of the decode step. peak: "
             + ("torch.cuda.max_memory_allocated." if kind == "gpu" else
                "resident high-water mark above the process before the model was built."))
    rows: list[dict] = []
    if kind == "cpu":  # what the first calls import and keep is the runtime's, not the model's
        for mode in modes:
            warm = build("micro", "seeded", device)
            measure(warm, "micro", "seeded", mode, 1, 4, 2, device, 1, 0)
            del warm

    def publish():
        write_results(name, {"rows": rows, "ratios": ratios(rows)}, table(rows), device=device_name,
                      directory=out_dir, notes=notes)
        plot(rows, out_dir / f"{name}.png", device_name or "CPU")

    for shape in shapes:
        for mode in modes:
            for variant in args.variants:
                reason = skip_reason(shape, variant, device)
                if reason is not None:
                    rows.append({"shape": shape, "variant": variant, "mode": mode, "skipped": reason})
                    publish()
                    continue
                torch.manual_seed(0)
                baseline = rss.resident_bytes() if kind == "cpu" else 0
                model = build(shape, variant, device)
                for batch in args.batches:
                    rows.append(measure(model, shape, variant, mode, batch, prompt, new_tokens, device, repeats,
                                        baseline))
                    publish()  # a session cut short keeps what it measured
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
                del model
                gc.collect()
                torch._dynamo.reset()
                if kind == "gpu":
                    torch.cuda.empty_cache()
    publish()
    print(table(rows))
    print(f"results written to {out_dir / (name + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
