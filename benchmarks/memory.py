"""Memory: what the seed saves, against stored weights with LoRA and with full training.

For LLaMA-style configs, each variant (benchmarks/harness/llama.py) and each phase, in a fresh process:
bytes of parameters, buffers and optimizer state, and the peak memory of a forward, of one
training step (Adam) and of greedy decoding. On CPU the peak is the process's peak RSS minus
the RSS before the model was built (the Python + torch runtime); on GPU it is
torch.cuda.max_memory_allocated. Then the seed-only inference case: the largest config whose
bf16 forward fits a memory budget, with stored weights and with lottalora.

    python -m benchmarks.memory            # full run, writes benchmarks/results/memory_<device>.*
    python -m benchmarks.memory --quick    # tiny config, smoke run (CI), writes under --out
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .harness.llama import VARIANTS, build, parameter_count
from .harness.results import RESULTS_DIR, write_results

PHASES = ("forward", "train", "decode")
FULL_CONFIGS = ["35M", "134M", "374M", "1.26B"]
BUDGET_CONFIGS = ["374M", "1.26B", "2.7B"]
BUDGET_BYTES = 4 * 2**30
SEQ, BATCH, PROMPT, NEW_TOKENS = 128, 1, 16, 3
MIB = 2**20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_one(name: str, variant: str, phase: str, dtype: torch.dtype, device: str) -> dict:
    """Build the model and run one phase in this process; returns the figures."""
    cuda = device.startswith("cuda")
    # Import what the phases use before the baseline, so the runtime is not counted as model.
    import transformers.generation.utils  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    import lottalora.ops.torch_backend  # noqa: F401

    torch.manual_seed(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    start = time.perf_counter()
    model = build(name, variant, dtype, device)
    vocab = model.config.vocab_size
    params = list(model.parameters())
    row = {
        "config": name, "variant": variant, "phase": phase, "dtype": str(dtype).removeprefix("torch."),
        "dense_params": parameter_count(name),
        "stored_params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers()),
        "optimizer_bytes": 0,
    }
    gen = torch.Generator().manual_seed(1)
    if phase == "forward":
        ids = torch.randint(0, vocab, (BATCH, SEQ), generator=gen).to(device)
        with torch.no_grad():
            model(ids)
    elif phase == "train":
        ids = torch.randint(0, vocab, (BATCH, SEQ), generator=gen).to(device)
        opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=1e-4)
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        row["optimizer_bytes"] = sum(t.numel() * t.element_size() for state in opt.state.values()
                                     for t in state.values() if torch.is_tensor(t))
    elif phase == "decode":
        ids = torch.randint(0, vocab, (1, PROMPT), generator=gen).to(device)
        with torch.no_grad():
            model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    else:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if cuda:
        torch.cuda.synchronize()
        row["peak_bytes"] = torch.cuda.max_memory_allocated() - base
    else:
        row["peak_bytes"] = _peak_rss_bytes() - base
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _run_isolated(name, variant, phase, dtype, device) -> dict:
    """measure_one in a fresh process so that peaks do not mix."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--one", name, variant, phase,
           str(dtype).removeprefix("torch."), device]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _skip_reason(name: str, variant: str, phase: str, dtype: torch.dtype, device: str) -> str | None:
    """Runs that cannot fit this machine, predicted from the parameter count (not measured)."""
    if device != "cpu" or variant != "full" or phase != "train":
        return None
    need = parameter_count(name) * (torch.finfo(dtype).bits // 8) * 4  # weights, grads, 2 Adam moments
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > 0.75 * total:
        return f"needs about {need / 2**30:.0f} GiB of {total / 2**30:.0f} GiB"
    return None


def _table(rows: list[dict]) -> str:
    lines = ["| config | variant | phase | stored params | trainable | params MiB | optimizer MiB | "
             "peak MiB | vs lora | vs full |", "|---|---|---|---|---|---|---|---|---|---|"]
    by_key = {(r["config"], r["variant"], r["phase"]): r for r in rows}
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['config']} | {r['variant']} | {r['phase']} | - | - | - | - | "
                         f"not run: {r['skipped']} | - | - |")
            continue
        ratios = []
        for other in ("lora", "full"):
            o = by_key.get((r["config"], other, r["phase"]))
            ratios.append(f"{r['peak_bytes'] / o['peak_bytes']:.2f}x" if o and "peak_bytes" in o else "-")
        lines.append(f"| {r['config']} | {r['variant']} | {r['phase']} | {r['stored_params']:,} | "
                     f"{r['trainable_params']:,} | {r['param_bytes'] / MIB:,.0f} | {r['optimizer_bytes'] / MIB:,.0f} | "
                     f"{r['peak_bytes'] / MIB:,.0f} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PHASES), figsize=(13, 4), sharey=True)
    for ax, phase in zip(axes, PHASES, strict=True):
        for variant, style in zip(VARIANTS, ("s-", "^-", "o-"), strict=True):
            pts = sorted((r["dense_params"], r["peak_bytes"] / MIB) for r in rows
                         if r["phase"] == phase and r["variant"] == variant and "peak_bytes" in r)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=variant)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(phase)
        ax.set_xlabel("model parameters (dense)")
    axes[0].set_ylabel("peak memory above runtime (MiB)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny config only (smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results; "
                                                  "a temporary one with --quick)")
    parser.add_argument("--one", nargs=5, metavar=("CONFIG", "VARIANT", "PHASE", "DTYPE", "DEVICE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        name, variant, phase, dtype, device = args.one
        print(json.dumps(measure_one(name, variant, phase, getattr(torch, dtype), device)))
        return 0

    configs = ["tiny"] if args.quick else FULL_CONFIGS
    budget_configs = ["tiny"] if args.quick else BUDGET_CONFIGS
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="lottalora-memory-")) if args.quick else RESULTS_DIR)
    train_dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    rows = []
    for name in configs:
        for variant in VARIANTS:
            for phase in PHASES:
                reason = _skip_reason(name, variant, phase, train_dtype, args.device)
                if reason:
                    rows.append({"config": name, "variant": variant, "phase": phase, "skipped": reason,
                                 "dense_params": parameter_count(name)})
                else:
                    rows.append(_run_isolated(name, variant, phase, train_dtype, args.device))
                print(_table(rows[-1:]).splitlines()[-1], flush=True)

    budget_rows = []
    for name in budget_configs:
        for variant in ("full", "lottalora"):  # stored weights vs seed-only, forward in bf16
            row = _run_isolated(name, variant, "forward", torch.bfloat16, args.device)
            row["fits_budget"] = row["peak_bytes"] <= BUDGET_BYTES
            budget_rows.append(row)
            print(f"budget: {name} {variant} peak {row['peak_bytes'] / MIB:,.0f} MiB", flush=True)
    largest = {v: max(((r["dense_params"], r["config"]) for r in budget_rows if r["variant"] == v and r["fits_budget"]),
                      default=(0, "none"))[1] for v in ("full", "lottalora")}
    budget_lines = [f"Seed-only inference in a {BUDGET_BYTES / 2**30:.0f} GiB budget (bf16 forward, batch 1 x {SEQ}):",
                    "", "| config | stored weights: peak MiB | lottalora: peak MiB |", "|---|---|---|"]
    for name in budget_configs:
        cells = [next(r for r in budget_rows if r["config"] == name and r["variant"] == v)
                 for v in ("full", "lottalora")]
        budget_lines.append(f"| {name} | " + " | ".join(
            f"{c['peak_bytes'] / MIB:,.0f}{'' if c['fits_budget'] else ' (over)'}" for c in cells) + " |")
    budget_lines += ["", f"Largest measured config that fits: stored weights {largest['full']}, "
                         f"lottalora {largest['lottalora']}."]
    table = _table(rows) + "\n\n" + "\n".join(budget_lines)
    print(table)
    device_tag = "cpu" if args.device == "cpu" else "gpu"
    notes = (f"Forward: batch {BATCH} x {SEQ} tokens. Train: one Adam step on the same batch "
             f"({str(train_dtype).removeprefix('torch.')}). Decode: greedy, prompt {PROMPT}, {NEW_TOKENS} new "
             "tokens. Peak is above the runtime's own memory (CPU: RSS before building). Variants: "
             "full = stored weights, all trained; lora = stored frozen weights + unfused rank-8 LoRA on "
             "q,k,v,o; lottalora = q,k,v,o seeded + rank-8 adapters, MLP seeded, no adapter. All train "
             "embeddings, norms and head.")
    write_results(f"memory_{device_tag}", {"runs": rows, "budget": budget_rows}, table,
                  directory=out_dir, notes=notes)
    _plot(rows, out_dir / f"memory_{device_tag}.png")
    print(f"results written to {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
