"""The house's rules, held: the import contracts of .importlinter (import-linter: the floors,
the kernels below the library, no circles, one module deciding Triton or PyTorch), and no
private name imported from another module (which import-linter does not check)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT

PACKAGES = ("lottalora", "lottalora_kernels")


def test_the_import_contracts_are_kept():
    pytest.importorskip("importlinter")
    lint_imports = Path(sys.executable).parent / "lint-imports"  # the environment's own script
    out = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _private_imports(path) -> list[str]:
    """``from module import _name`` statements of ``path`` (a leading underscore, not a dunder)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {'.' * node.level}"
                                 f"{node.module or ''} import {alias.name}")
    return found


def test_no_module_imports_another_modules_private_names():
    found = [line for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             for line in _private_imports(path)]
    assert found == [], "private names imported across modules (make them public in the lower module):\n" + \
        "\n".join(found)


def test_the_code_passes_ruff():
    pytest.importorskip("ruff")
    ruff = Path(sys.executable).parent / "ruff"
    out = subprocess.run([str(ruff), "check", *PACKAGES, "benchmarks", "tests"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout[-4000:]
