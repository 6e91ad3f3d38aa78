"""Counting the calls a code path makes to a module's functions (monkeypatched wrappers)."""

from __future__ import annotations


def count_calls(monkeypatch, module, names, label=None) -> list:
    """Wrap ``module``'s functions ``names`` so each call appends its name (or ``label(name)``) to
    the returned list, then calls the real function."""
    calls = []
    for name in names:
        real = getattr(module, name)
        tag = label(name) if label is not None else name
        monkeypatch.setattr(module, name, lambda *a, _real=real, _tag=tag, **k: calls.append(_tag) or _real(*a, **k))
    return calls
