"""The README and the documentation site run as written: every fenced python block of README.md
and docs/**/*.md, verbatim, each page's blocks in order in one namespace (a page's later blocks
may use what its earlier ones defined); and the demo options the README lists."""

import re

import pytest

from tests.support.processes import ROOT

_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(page) -> list[tuple[int, str]]:
    """(line of the opening fence, code) of each ```python block of ``page``."""
    text = page.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def test_the_readme_and_the_docs_have_python_blocks():
    assert python_blocks(ROOT / "README.md")
    assert sum(len(python_blocks(p)) for p in PAGES) >= 6


@pytest.mark.parametrize("page", [pytest.param(p, id=str(p.relative_to(ROOT))) for p in PAGES
                                  if python_blocks(p)])
def test_every_python_block_runs_verbatim(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    if any("transformers" in code for _, code in blocks):
        pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)  # blocks that write files (a checkpoint) write them here
    namespace = {"__name__": "__docs__"}
    for line, code in blocks:
        exec(compile(code, f"{page}:{line}", "exec"), namespace)


def test_the_docs_list_every_demo_option(capsys):
    from lottalora.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", capsys.readouterr().out)) - {"--help"}
    assert "--task" in options and "--no-progress" in options
    page = (ROOT / "docs" / "demo.md").read_text()
    assert {o for o in options if f"`{o}" not in page} == set()
