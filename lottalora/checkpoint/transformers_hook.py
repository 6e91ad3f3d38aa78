"""Registering "lottalora" with transformers' Auto classes without importing transformers.

``import lottalora`` calls ``register_with_transformers``: the config is registered with
``AutoConfig`` once ``transformers.models.auto.configuration_auto`` is imported, and the loaders
with every ``AutoModel*`` once ``transformers.models.auto.modeling_auto`` is: at once for a module
already imported, else right after its first import (an import hook on ``sys.meta_path`` that
watches those two names only and removes itself when both are done). ``import transformers``
alone imports neither (transformers imports its modules lazily), so a process that never uses
the Auto classes never loads them on lottalora's account.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings
from collections.abc import Callable

CONFIGURATION_AUTO = "transformers.models.auto.configuration_auto"
MODELING_AUTO = "transformers.models.auto.modeling_auto"


def _register_config(module) -> None:
    from .transformers_auto import register_config

    register_config(module)


def _register_models(module) -> None:
    from .transformers_auto import register_models

    register_models(module)


def _run(callback: Callable, module) -> None:
    # A failure here must not break transformers' own import: the directory is then refused by
    # its model type, as without lottalora, and the warning says why.
    try:
        callback(module)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"lottalora could not register with transformers' Auto classes ({type(exc).__name__}: {exc}); "
                      "load lottalora directories with lottalora.from_pretrained", RuntimeWarning, stacklevel=2)


class _CallbackLoader(importlib.abc.Loader):
    """The module's own loader, then the finder's callback for it on the executed module."""

    def __init__(self, loader, finder: _AfterImport) -> None:
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        module.__loader__ = self.loader  # what inspect and importlib.resources expect to find
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        self.finder.imported(module)

    def __getattr__(self, name):  # get_source, get_filename, is_package, ...
        return getattr(self.loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback once a watched module has been imported (each once; a spec only looked
    up, as ``importlib.util.find_spec`` does, runs nothing)."""

    def __init__(self) -> None:
        self.pending: dict[str, Callable] = {}

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _CallbackLoader(spec.loader, self)
                return spec
        return None

    def imported(self, module) -> None:
        callback = self.pending.pop(module.__name__, None)
        if not self.pending and self in sys.meta_path:
            sys.meta_path.remove(self)
        if callback is not None:
            _run(callback, module)


_FINDER = _AfterImport()


def register_with_transformers() -> None:
    """Register with transformers' Auto classes now or when they are imported (module docstring).
    Calling it again does nothing new."""
    for name, callback in ((CONFIGURATION_AUTO, _register_config), (MODELING_AUTO, _register_models)):
        module = sys.modules.get(name)
        if module is not None:
            _FINDER.pending.pop(name, None)
            _run(callback, module)
        else:
            _FINDER.pending[name] = callback
    if _FINDER.pending and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
