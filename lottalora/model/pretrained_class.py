"""The class a converted transformers model gets: its own class with lottalora's save_pretrained.

transformers' ``save_pretrained`` writes a model's dense weights and its architecture's config;
a converted model saved that way comes back from ``from_pretrained`` as the architecture with
fresh random weights where the seeds were. So ``convert`` (and ``lottalora.from_pretrained``)
change the class of the model in place, as FSDP2's ``fully_shard`` does, to a subclass made for
it: ``SeededPreTrainedModel`` first, then the model's class. The subclass has the class's name,
module and qualified name (``type(model).__name__`` is still ``LlamaForCausalLM``; transformers'
checks that read the class's module keep working); only ``save_pretrained`` differs, and
``push_to_hub`` and ``Trainer`` save through it. Nothing is patched on transformers' classes:
other models of the same class are untouched. ``merge_and_unload`` gives the model its class
back. Instances deepcopy and pickle as transformers models do (``__reduce_ex__`` rebuilds the
subclass from the class), in processes that import lottalora.

What ``save_pretrained`` writes is the checkpoint floor's job (``lottalora.checkpoint``, above
this one): it installs its writer in ``SeededPreTrainedModel.directory_writer`` when it is
imported, which ``import lottalora`` always does.

A model whose class is not the seeded one can still hold converted layers: a submodule
converted on its own (``convert(model.model)`` leaves ``model`` a plain ``LlamaForCausalLM``),
a model of the user's own ``PreTrainedModel`` class, or a seeded model inside another
transformers model. transformers' ``save_pretrained`` of such a model would write the seeded
layers' tensors where the architecture expects dense weights, and its ``from_pretrained`` would
fill them with fresh random values. ``refuse_plain_saves`` gives every converted module a
state-dict hook that refuses exactly that write, by name, while any other ``state_dict`` call
(``torch.save``, the Trainer's own files, FSDP2, lottalora's writer) is untouched.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ClassVar

from torch import nn

from ..nn import seeded_layers

_BASE_ATTR = "__lottalora_base__"


class SeededPreTrainedModel:
    """Mixin of a converted transformers model's class: ``save_pretrained(directory, ...)`` writes
    a lottalora directory (seeds + adapters, the architecture and the convert calls:
    ``lottalora.checkpoint.save_pretrained``), which ``AutoModel*.from_pretrained`` and
    ``lottalora.from_pretrained`` rebuild."""

    # (model, save_directory, *args, **kwargs) -> None; set by lottalora.checkpoint.
    directory_writer: ClassVar[Callable | None] = None

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Write this converted model as a lottalora directory (``lottalora.checkpoint.save_pretrained``
        lists the arguments it takes and the ones it refuses)."""
        writer = SeededPreTrainedModel.directory_writer
        if writer is None:  # only before lottalora.checkpoint is imported: import lottalora does it
            raise RuntimeError("lottalora.checkpoint is not imported: import lottalora to save a converted model")
        return writer(self, save_directory, *args, **kwargs)

    def __reduce_ex__(self, protocol):
        base = getattr(type(self), _BASE_ATTR, None)
        if base is None or type(self) is not seeded_class(base):  # a further subclass (FSDP2's) reduces as it does
            return super().__reduce_ex__(protocol)
        reduced = super().__reduce_ex__(max(protocol, 2))  # (copyreg.__newobj__, (cls,), state, ...)
        return (_new_seeded_instance, (base,), *reduced[2:])


@functools.cache
def seeded_class(base: type) -> type:
    """The class a converted model of class ``base`` gets (one per class, made once)."""
    return type(base.__name__, (SeededPreTrainedModel, base),
                {"__module__": base.__module__, "__qualname__": base.__qualname__, _BASE_ATTR: base})


def _new_seeded_instance(base: type):
    cls = seeded_class(base)
    return cls.__new__(cls)


def base_class(cls: type) -> type:
    """The class a seeded class was made from; ``cls`` itself for any other class."""
    return getattr(cls, _BASE_ATTR, None) or cls


def _is_transformers_model_class(cls: type) -> bool:
    """A transformers PreTrainedModel class, without importing transformers."""
    return cls.__module__.startswith("transformers.") and any(
        k.__name__ == "PreTrainedModel" and k.__module__ == "transformers.modeling_utils" for k in cls.__mro__)


def adopt_seeded_class(model: nn.Module) -> None:
    """Give a transformers model the seeded class of its class (nothing for other modules, or a
    model already seeded, or one whose class is no longer the architecture's own: convert before
    ``fully_shard``)."""
    cls = type(model)
    if not isinstance(model, SeededPreTrainedModel) and _is_transformers_model_class(cls):
        model.__class__ = seeded_class(cls)


def release_seeded_class(model: nn.Module) -> None:
    """Give a model its own class back (a merged model is a plain transformers model again)."""
    base = getattr(type(model), _BASE_ATTR, None)
    if base is not None and type(model) is seeded_class(base):
        model.__class__ = base


# The id of the hook on a module that carries it, so a module converted twice registers it once
# and merging removes it.
_GUARD_ATTR = "_lottalora_refuses_plain_saves"


def refuse_plain_saves(module: nn.Module) -> None:
    """Make transformers' ``save_pretrained`` of any model holding ``module`` (a module that
    ``convert`` converted or ``from_pretrained`` rebuilt) raise ValueError instead of writing
    its seeded layers as dense weights that no ``from_pretrained`` rebuilds. Registered once,
    as a module-level function (the model still pickles); ``stop_refusing_plain_saves`` removes it."""
    if module.__dict__.get(_GUARD_ATTR) is None:
        handle = module.register_state_dict_pre_hook(_refuse_transformers_writer)
        object.__setattr__(module, _GUARD_ATTR, handle.id)


def stop_refusing_plain_saves(module: nn.Module) -> None:
    """Remove the hook ``refuse_plain_saves`` registered (a merged model is plain torch again)."""
    hook_id = module.__dict__.pop(_GUARD_ATTR, None)
    if hook_id is not None:
        module._state_dict_pre_hooks.pop(hook_id, None)


def _transformers_writer_model() -> nn.Module | None:
    """The model whose ``state_dict`` transformers' ``PreTrainedModel.save_pretrained`` is
    taking right now on this thread (the innermost such call), or None. transformers takes
    ``model.state_dict()`` inside that function and offers no hook of its own there; its frame
    is the one sure sign that the state dict is about to become a dense checkpoint."""
    modeling = sys.modules.get("transformers.modeling_utils")
    writer = getattr(getattr(modeling, "PreTrainedModel", None), "save_pretrained", None)
    code = getattr(writer, "__code__", None)
    if code is None:
        return None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return frame.f_locals.get("self")
        frame = frame.f_back
    return None


def _refuse_transformers_writer(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    model = _transformers_writer_model()
    if model is None or not any(m is module for m in model.modules()):
        return
    layers = seeded_layers(module)
    if not layers:  # every seeded layer replaced by hand since: nothing to lose
        return
    where = f"under {prefix.rstrip('.')!r}" if prefix else "in it"
    name = type(model).__name__
    fix = (f"convert the {name} itself (lottalora.convert on the model you save gives it lottalora's "
           "save_pretrained) or write it with lottalora.save(model, directory), which "
           "lottalora.from_pretrained and, after import lottalora, AutoModel*.from_pretrained rebuild"
           if _is_transformers_model_class(base_class(type(model))) else
           "write it with lottalora.save(model, directory) and load that onto the model built and converted in "
           "code with lottalora.load(model, directory)")
    count = f"{len(layers)} seeded layer{'s' if len(layers) > 1 else ''}"
    raise ValueError(f"{name}.save_pretrained would write the {count} {where} as a dense "
                     "checkpoint, which from_pretrained rebuilds with fresh random weights in their place: " + fix)
