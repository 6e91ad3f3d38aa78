"""What the end-to-end scripts (benchmarks.generate, benchmarks.train) share on their command
line: the machine options and the device they pick."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def add_machine_arguments(parser: argparse.ArgumentParser) -> None:
    """--threads and --out, as both scripts take them."""
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the figures of a "
                                                                  "shared machine are steadier)")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results; a temporary "
                                                  "one with --quick)")


def pick_device(args: argparse.Namespace) -> tuple[torch.device, str]:
    """(the CUDA device if there is one, else the CPU with ``--threads`` threads; "gpu" or "cpu")."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = "gpu" if device.type == "cuda" else "cpu"
    if kind == "cpu":
        torch.set_num_threads(args.threads)
    return device, kind
