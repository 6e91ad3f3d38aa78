"""The README runs as written: every fenced python block, verbatim, and the demo options it lists."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[int, str]]:
    """(line of the opening fence, code) of each ```python block in README.md."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def test_the_readme_has_python_blocks():
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("line,code", [pytest.param(line, code, id=f"line{line}") for line, code in python_blocks()])
def test_readme_python_block_runs_verbatim(line, code, tmp_path, monkeypatch):
    if "transformers" in code:
        pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)  # blocks that write files (a checkpoint) write them here
    exec(compile(code, f"{README}:{line}", "exec"), {"__name__": "__readme__"})


def test_readme_lists_every_demo_option(capsys):
    from lottalora.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", capsys.readouterr().out)) - {"--help"}
    assert "--task" in options and "--no-progress" in options
    section = README.read_text().split("## The rank sweep", 1)[1].split("\n## ", 1)[0]
    assert {o for o in options if f"`{o}" not in section} == set()
