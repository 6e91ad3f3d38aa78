"""A converted model's load_state_dict is all or nothing: every seeded layer's entries are
checked before any module loads."""

from __future__ import annotations

from torch import nn

from ..nn import SEEDED_LAYER_TYPES

_CHECKS_LOADS_ATTR = "_lottalora_checks_loads_whole"


def _check_seeded_layers_first(model: nn.Module, state_dict, prefix: str, *_) -> None:
    """load_state_dict pre-hook of a converted model: every seeded layer's entries are checked
    before any module loads. nn.Module loads module by module (each seeded layer is itself
    all-or-nothing), so a bad entry in a late layer would otherwise raise after the earlier
    layers had loaded, leaving a half-loaded model."""
    # Every name a layer goes by (a module shared under two names loads under both), relative to
    # the module the hook is on (a wrapper's names included): not nn.seeded_layers, which names
    # each layer once in the unwrapped model. Keys that a
    # wrapper below the root renames in its own pre-hook (activation-checkpoint wrappers) are not
    # in the dict yet: such layers are checked when they load, one at a time.
    for name, layer in model.named_modules(remove_duplicate=False):
        if isinstance(layer, SEEDED_LAYER_TYPES) and layer is not model:
            layer.check_state_dict(state_dict, f"{prefix}{name}.")


def check_loads_whole(model: nn.Module) -> None:
    """Register the check on ``model`` once (a module-level function: the model still pickles);
    the hook's id is kept on the model so that ``forget_load_check`` can remove it."""
    if getattr(model, _CHECKS_LOADS_ATTR, None) is None and not isinstance(model, SEEDED_LAYER_TYPES):
        handle = model.register_load_state_dict_pre_hook(_check_seeded_layers_first)
        object.__setattr__(model, _CHECKS_LOADS_ATTR, handle.id)


def forget_load_check(model: nn.Module) -> None:
    """Remove the hook ``check_loads_whole`` registered (a merged model is plain torch again)."""
    hook_id = model.__dict__.pop(_CHECKS_LOADS_ATTR, None)
    if hook_id is not None:
        model._load_state_dict_pre_hooks.pop(hook_id, None)
