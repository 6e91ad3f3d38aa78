"""The settings read from the environment follow it call by call, as os.environ.get does."""

import os

from lottalora_kernels.environment import flag, setting


def test_settings_follow_the_environment_as_it_changes(monkeypatch):
    monkeypatch.delenv("LOTTALORA_TEST_SETTING", raising=False)
    assert setting("LOTTALORA_TEST_SETTING", "default") == "default" and not flag("LOTTALORA_TEST_SETTING")
    assert flag("LOTTALORA_TEST_SETTING", default=True)
    monkeypatch.setenv("LOTTALORA_TEST_SETTING", "1")
    assert setting("LOTTALORA_TEST_SETTING", "x") == "1" and flag("LOTTALORA_TEST_SETTING")
    os.environ["LOTTALORA_TEST_SETTING"] = "0"
    assert not flag("LOTTALORA_TEST_SETTING", default=True)
    os.environ["LOTTALORA_TEST_SETTING"] = "é ünïcode"
    assert setting("LOTTALORA_TEST_SETTING", "") == os.environ.get("LOTTALORA_TEST_SETTING")


def test_every_setting_the_library_reads_has_its_key_encoded_at_import():
    """The key cache is filled at import and never added to (a key added while torch.compile
    traced a call failed the graph's guard on the cache: a recompile at the next call), so every
    name the library reads through ``setting`` / ``flag`` must be in it, else it pays an encoding
    per read."""
    import re
    from pathlib import Path

    from lottalora_kernels import environment

    root = Path(environment.__file__).parents[1]
    read = set()
    for package in ("lottalora", "lottalora_kernels"):
        for path in (root / package).rglob("*.py"):
            read |= set(re.findall(r"\b(?:setting|flag)\(\s*\"([A-Z0-9_]+)\"", path.read_text()))
    assert read and read <= set(environment._KEYS), sorted(read - set(environment._KEYS))
