"""Writing benchmark results: JSON + markdown, stamped with device, versions and date."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def environment(device: str | None = None) -> dict:
    """What produced a result: device, library versions, date."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device is None:
        device = (torch.cuda.get_device_name() if torch.cuda.is_available()
                  else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)")
    return {"device": device, "torch": torch.__version__, "triton": triton_version,
            "python": platform.python_version(), "date": datetime.date.today().isoformat()}


def write_results(name: str, rows: list[dict] | dict, table: str, device: str | None = None,
                  directory: Path = RESULTS_DIR, notes: str = "") -> tuple[Path, Path]:
    """Write ``name``.json and ``name``.md under ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    json_path = directory / f"{name}.json"
    md_path = directory / f"{name}.md"
    json_path.write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    stamp = ", ".join(f"{k} {v}" for k, v in env.items())
    md_path.write_text(f"# {name}\n\nMeasured: {stamp}.\n\n{notes + chr(10) * 2 if notes else ''}{table}\n")
    return json_path, md_path


def publish(name: str, rows: list[dict] | dict, table: str, notes: str = "", directory: Path = RESULTS_DIR,
            device: str | None = None) -> Path:
    """``write_results``, then print the table and where it went (a script's last step); returns
    the markdown's path."""
    _, md_path = write_results(name, rows, table, device=device, directory=directory, notes=notes)
    print(table)
    print(f"results written to {md_path}")
    return md_path
