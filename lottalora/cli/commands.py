"""The ``lottalora`` command (also ``python -m lottalora``)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
from pathlib import Path

import torch

from lottalora_kernels.stream.spec import INITS

from ..model.placement import check_device


def _ranks(text: str) -> list[int]:
    try:
        ranks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ranks must be comma-separated integers, got {text!r}") from None
    if not ranks or ranks[0] < 0:
        raise argparse.ArgumentTypeError(f"--ranks must be integers >= 0, got {text!r}")
    return ranks


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"--device must be cpu or cuda[:N], got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"--device must be cpu or cuda[:N], got {text!r}")
    try:  # a CUDA device this machine has
        check_device(device, "--device")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden sizes must be >= 1, got {text!r}")
    return sizes


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):  # NaN compared false everywhere: no rank would saturate
        raise argparse.ArgumentTypeError(f"--tolerance must be a finite fraction >= 0, got {text!r}")
    return value


def _unwritable(directory: Path) -> str | None:
    """Why no file can be created in ``directory``, or None. Tried, not read off the permissions:
    root passes every permission check, and /proc refuses new files whatever they say."""
    if not directory.is_dir():
        return "does not exist" if not directory.exists() else "is not a directory"
    try:
        with tempfile.TemporaryFile(dir=directory):
            return None
    except OSError as exc:
        return f"is not writable ({exc.strerror})"


# --save and --plot are checked as the arguments are read, so that a run does not train for
# minutes and then fail writing its result.
def _save_directory(text: str) -> str:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"--save {text!r} is a file: give a directory (created if needed)")
    existing = next(p for p in (path, *path.parents) if p.exists())  # lottalora.save creates the rest
    problem = _unwritable(existing)
    if problem:
        raise argparse.ArgumentTypeError(f"--save {text!r} cannot be created: {str(existing)!r} {problem}")
    return text


def _plot_file(text: str) -> str:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"--plot {text!r} is a directory: give the path of a PNG file")
    problem = _unwritable(path.parent)
    if problem:
        raise argparse.ArgumentTypeError(f"--plot {text!r} cannot be written: its directory {str(path.parent)!r} "
                                         f"{problem}")
    return text


def _missing_demo_packages(args: argparse.Namespace) -> list[str]:
    """What this ``lottalora demo`` run imports beyond the library (the demo extra), missing here."""
    import importlib.util

    needed = [{"digits": ("sklearn", "scikit-learn"), "mnist1d": ("mnist1d", "mnist1d"),
               "mnist1d-cnn": ("mnist1d", "mnist1d")}[args.task]]
    if not args.no_progress:
        needed.append(("tqdm", "tqdm"))
    if args.plot:
        needed.append(("matplotlib", "matplotlib"))
    return [package for module, package in needed if importlib.util.find_spec(module) is None]


def _demo(args: argparse.Namespace) -> int:
    missing = _missing_demo_packages(args)
    if missing:
        print(f"error: lottalora demo needs {', '.join(missing)}: pip install \"lottalora[demo]\" (or, from a "
              "checkout, pip install -e \".[demo]\")", file=sys.stderr)
        return 2
    from ..checkpoint import save
    from .demo import TASKS, average_sweeps, best_seeded, format_table, plot_sweep, run_sweep, saturation_rank

    task = TASKS[args.task]
    ranks = list(task.ranks) if args.ranks is None else args.ranks
    epochs = args.epochs or task.epochs
    hidden = args.hidden or task.hidden
    device = torch.device(args.device) if args.device else None
    seeds = range(args.seed, args.seed + args.seeds)
    full, sweep = average_sweeps([run_sweep(ranks, task=args.task, init=args.init, epochs=epochs, seed=seed,
                                            hidden=hidden, device=device, show_progress=not args.no_progress,
                                            use_dora=args.dora)
                                  for seed in seeds])
    network = dataclasses.replace(task, hidden=tuple(hidden)).description
    spec = next(m.spec for m in sweep[0].model.modules() if hasattr(m, "spec")) if sweep else None
    backbone = f"{spec.init} (stream v{spec.version})" if spec is not None else args.init
    seed_text = f"seed={args.seed}" if args.seeds == 1 else f"seeds={args.seed}..{args.seed + args.seeds - 1}"
    print(f"{task.title}, {network}, init={backbone}{', DoRA' if args.dora else ''}, epochs={epochs}, {seed_text}, "
          f"device={(device or ('cuda' if torch.cuda.is_available() else 'cpu'))}")
    print(format_table(full, sweep))
    sat = saturation_rank(full, sweep, args.tolerance)
    if sat is None:
        print(f"saturation rank: none of {ranks} is within {args.tolerance:.1%} of full training")
    else:
        print(f"saturation rank (within {args.tolerance:.1%} of full training): {sat}")
    if args.plot:
        plot_sweep(full, sweep, args.plot, sat, title=task.label)
        print(f"plot written to {args.plot}")
    if args.save:
        best = best_seeded([r for r in sweep])
        save(best.model, args.save)
        print(f"best model (rank {best.rank}, mean accuracy {best.test_accuracy:.4f}; the run with seed "
              f"{args.seed}) saved as seed + adapters "
              f"to {args.save}; inspect it with: lottalora info {args.save}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..checkpoint import describe
    from ..checkpoint.format import terminal_safe

    directory = Path(args.directory)
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        print(f"error: {terminal_safe(str(directory))} {problem}: give a directory written by lottalora.save "
              "(or lottalora demo --save DIR)", file=sys.stderr)
        return 2
    try:
        print(describe(args.directory))
    except (ValueError, OSError) as exc:  # a refused checkpoint, or an unreadable file
        print(f"error: {terminal_safe(str(exc))}", file=sys.stderr)
        return 2
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" only where there is a default worth reading."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .demo import TASKS

    # allow_abbrev=False: "--rank 4" must not be taken silently as "--ranks 4".
    options = {"allow_abbrev": False, "formatter_class": _HelpFormatter}
    parser = argparse.ArgumentParser(prog="lottalora", description=__doc__, **options)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="rank sweep: full training vs LottaLoRA at several ranks",
                          description="Rank sweep: full training against LottaLoRA (frozen random hidden "
                                      "layers + rank-r adapters) at several ranks, on a task that needs no "
                                      "download.", **options)
    per_task = ", ".join(f"{t.name}: {{}}" for t in TASKS.values())

    def task_defaults(field: str) -> str:
        return "default: " + per_task.format(*(_comma(getattr(t, field)) for t in TASKS.values()))

    demo.add_argument("--task", choices=sorted(TASKS), default="mnist1d",
                      help="mnist1d: MNIST-1D, where rank saturation shows (about a minute on a 2-core CPU); "
                           "digits: scikit-learn's 8x8 digits, quick; mnist1d-cnn: MNIST-1D with a CNN whose Conv1d "
                           "layers are all seeded (--hidden: its channels)")
    demo.add_argument("--ranks", type=_ranks,
                      help="comma-separated ranks; 0 is the frozen random layer with beta and bias only "
                           f"({task_defaults('ranks')})")
    demo.add_argument("--init", choices=INITS, default=None,
                      help="backbone distribution (default: the library's, stream v2's binary rademacher; "
                           "gaussian and uniform take stream v1)")
    demo.add_argument("--epochs", type=_positive,
                      help=f"training epochs of every run, full and each rank ({task_defaults('epochs')})")
    demo.add_argument("--seed", type=int, default=0, help="backbone seed and training seed (the first one)")
    demo.add_argument("--seeds", type=_positive, default=3,
                      help="runs per rank, seeds --seed, --seed + 1, ...: the table shows mean +- sd and the "
                           "saturation rank reads the means")
    demo.add_argument("--hidden", type=_hidden,
                      help="hidden widths; narrow layers make the rank matter (wide random features alone do "
                           f"well) ({task_defaults('hidden')})")
    demo.add_argument("--tolerance", type=_tolerance, default=0.02,
                      help="saturation: accuracy within this fraction of full training")
    demo.add_argument("--plot", metavar="PNG", type=_plot_file, help="write accuracy against rank to this PNG")
    demo.add_argument("--device", type=_device, help="cpu or cuda (default: cuda when available)")
    demo.add_argument("--dora", action="store_true",
                      help="DoRA (PEFT's use_dora: a trained magnitude per output channel or row) on every seeded "
                           "layer of rank >= 1; rank 0 stays the plain frozen layer")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--save", metavar="DIR", type=_save_directory,
                      help="save the best LottaLoRA model as seed + adapters")
    demo.set_defaults(run=_demo)
    info = sub.add_parser("info", help="what a seed-only checkpoint holds and what it saves", **options)
    info.add_argument("directory", help="a directory written by lottalora.save")
    info.set_defaults(run=_info)
    return parser


def _comma(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
