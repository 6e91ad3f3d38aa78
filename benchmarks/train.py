"""Training end to end: a training step of a 1B-class LLaMA with the paper's recipe, against PEFT
LoRA on the same frozen backbone stored, and against full training.

Variants (each a LlamaForCausalLM of one ``harness.llama`` config, trainable parameters in
float32, the step under ``torch.autocast`` bf16, AdamW on the trainable parameters):
- ``lottalora``: the paper's recipe (``harness.llama``): q, k, v, o seeded with rank-8 adapters,
  the MLP seeded without; embeddings, norms and head trained;
- ``peft_lora``: the same shape with its frozen random backbone stored as bf16 ``nn.Linear``
  weights and PEFT LoRA adapters (``peft.get_peft_model``, rank 8 on q, k, v, o), embeddings,
  norms and head trained as in the recipe: the paper's own method as users run it;
- ``full``: everything stored in float32 and trained.
Modes: ``eager`` and ``compiled`` (``torch.compile`` of the model). Per row: ``tokens_per_s``
(batch x sequence over the median step), ``peak_bytes`` (GPU: ``torch.cuda.max_memory_allocated``
over the timed steps; CPU: the resident high-water mark over them above the process before the
model was built), the bytes of the model and of the optimizer state. Each row is written to --out
as soon as it is measured.

    python -m benchmarks.train              # GPU: the 1.26B config, sequence 1024
    python -m benchmarks.train --quick      # the tiny config, a few steps, eager (CI)
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
from .harness.llama import ATTENTION, MLP, RANK, TRAINABLE, build, parameter_count
from .harness.llama_shapes import held_bytes
from .harness.results import RESULTS_DIR, write_results
from .harness.script import add_machine_arguments, pick_device

VARIANTS = ("lottalora", "peft_lora", "full")
MODES = ("eager", "compiled")
MIB = 2**20


def build_variant(config: str, variant: str, device: torch.device) -> torch.nn.Module:
    """The model of ``variant`` (module docstring) on ``device``, in training mode."""
    if variant == "lottalora":
        return build(config, "lottalora", torch.float32, device).train()
    model = build(config, "full", torch.float32, device)
    if variant == "full":
        return model.train()
    if variant != "peft_lora":
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    import peft

    with torch.no_grad():  # the frozen backbone as users hold it: bf16
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rpartition(".")[2] in ATTENTION + MLP:
                module.weight.data = module.weight.data.to(torch.bfloat16)
    model = peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=RANK, target_modules=ATTENTION,
                                                       lora_dropout=0.0))
    for name, param in model.named_parameters():
        if any(f".{t}." in f".{name}" for t in TRAINABLE):
            param.requires_grad_(True)
    return model.train()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: str, variant: str, mode: str, batch: int, seq: int, steps: int, warmup: int,
            device: torch.device) -> dict:
    """One row: ``steps`` timed training steps after ``warmup`` ones."""
    torch.manual_seed(0)
    baseline = rss.resident_bytes() if device.type == "cpu" else 0
    model = build_variant(config, variant, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    forward = torch.compile(model) if mode == "compiled" else model
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1)).to(device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        rss.resident_bytes()  # what the warm-up freed goes back first, so the mark starts at what is held
        rss.reset_peak()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak_bytes() - baseline
    assert torch.isfinite(loss), f"{variant} {mode}: loss {loss.item()}"
    step_s = statistics.median(times)
    row = {
        "config": config, "variant": variant, "mode": mode, "batch": batch, "seq": seq, "steps": steps,
        "step_s": step_s, "tokens_per_s": batch * seq / step_s, "peak_bytes": peak,
        "model_bytes": held_bytes(model), "trainable_params": sum(p.numel() for p in trainable),
        "optimizer_bytes": sum(t.numel() * t.element_size() for state in optimizer.state.values()
                               for t in state.values() if torch.is_tensor(t)),
        "dense_params": parameter_count(config),
    }
    return row


def measure_and_free(*args) -> dict:
    """``measure``, then what it built freed before the next variant is built."""
    row = measure(*args)
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def ratios(rows: list[dict]) -> list[dict]:
    """lottalora against each other variant, per mode: tokens/s ratio and peak memory saved."""
    by = {(r["variant"], r["mode"]): r for r in rows}
    out = []
    for (variant, mode), r in by.items():
        if variant == "lottalora":
            for other in ("peft_lora", "full"):
                o = by.get((other, mode))
                if o:
                    out.append({"mode": mode, "against": other,
                                "tokens_per_s_ratio": r["tokens_per_s"] / o["tokens_per_s"],
                                "peak_bytes_saved": o["peak_bytes"] - r["peak_bytes"]})
    return out


def table(rows: list[dict]) -> str:
    lines = ["| config | variant | mode | batch x seq | tokens/s | peak MiB | model MiB | optimizer MiB |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['variant']} | {r['mode']} | {r['batch']} x {r['seq']} | "
                     f"{r['tokens_per_s']:,.0f} | {r['peak_bytes'] / MIB:,.0f} | {r['model_bytes'] / MIB:,.0f} | "
                     f"{r['optimizer_bytes'] / MIB:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny config, a few steps, eager only (CI)")
    parser.add_argument("--config", help="harness.llama config (default: 1.26B on a GPU, 35M on the CPU)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--modes", nargs="+", choices=MODES, help="default: both (eager only with --quick)")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--seq", type=int)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="steps before timing (compilation)")
    add_machine_arguments(parser)
    args = parser.parse_args(argv)
    device, kind = pick_device(args)
    config = args.config or ("tiny" if args.quick else "1.26B" if kind == "gpu" else "35M")
    batch = args.batch or (2 if args.quick or kind == "cpu" else 8)
    seq = args.seq or (32 if args.quick else 1024 if kind == "gpu" else 128)
    modes = args.modes or (["eager"] if args.quick else list(MODES))
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    out_dir = args.out or (Path(tempfile.mkdtemp()) if args.quick else RESULTS_DIR)
    name = f"train_{kind}"
    notes = (f"A training step (forward, backward, AdamW) under bf16 autocast, trainable parameters float32; "
             f"median of {steps} steps after {warmup}. lottalora = the paper's recipe (q, k, v, o seeded with "
             "rank-8 adapters, the MLP seeded without, embeddings/norms/head trained); peft_lora = the same frozen "
             "backbone stored bf16 with PEFT LoRA rank 8 on q, k, v, o, the same modules trained; full = all "
             "trained. peak: " + ("torch.cuda.max_memory_allocated." if kind == "gpu" else
                                  "resident high-water mark above the process before the model was built."))
    if kind == "cpu":  # what the first steps import and keep is the runtime's, not the model's
        for mode in modes:
            measure_and_free("tiny", "lottalora", mode, 1, 8, 1, 1, device)
    rows: list[dict] = []
    for mode in modes:
        for variant in args.variants:
            rows.append(measure_and_free(config, variant, mode, batch, seq, steps, warmup, device))
            write_results(name, {"rows": rows, "ratios": ratios(rows)}, table(rows), directory=out_dir, notes=notes)
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    print(f"results written to {out_dir / (name + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
