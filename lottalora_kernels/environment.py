"""The library's settings read from the environment at every call (never cached at import, so
a test or a benchmark may change them between calls), in one dictionary lookup: the launchers
and the op read several on every call, and ``os.environ.get`` goes through the Mapping machinery
and a key encoding each time. Imports neither Triton nor torch."""

from __future__ import annotations

import os

# CPython on POSIX keeps the environment as bytes in os.environ._data, which os.environ's
# setters (and pytest's monkeypatch.setenv) keep current; elsewhere the plain lookup serves.
_DATA = getattr(os.environ, "_data", None) if os.name == "posix" else None
# The library's settings' keys, encoded once and never added to: a key added while torch.compile
# traces a call fails the graph's guard on this dictionary, a recompile at the next call.
_KEYS: dict[str, bytes] = {name: os.fsencode(name) for name in (
    "LOTTALORA_BACKEND", "LOTTALORA_ONE_PASS", "LOTTALORA_POISON_OUTPUTS", "TRITON_INTERPRET")}


def setting(name: str, default: str) -> str:
    """``os.environ.get(name, default)``, read now."""
    if _DATA is None:
        return os.environ.get(name, default)
    key = _KEYS.get(name) or os.fsencode(name)
    value = _DATA.get(key)
    return default if value is None else os.fsdecode(value)


def flag(name: str, default: bool = False) -> bool:
    """A boolean setting: unset gives ``default``; "" and "0" are False, anything else True."""
    value = setting(name, "1" if default else "0")
    return value not in ("", "0")
