"""The documentation site builds with ``mkdocs build --strict``: every page in the nav, every
link between pages, and the API reference generated from the docstrings (mkdocstrings)."""

import os
import subprocess
import sys

import pytest

from tests.support.processes import ROOT


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "beta * x @ W_seed^T" in api and "seeded_linear_shard" in api  # the docstrings made it in
