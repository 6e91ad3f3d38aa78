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
