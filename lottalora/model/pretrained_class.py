"""The class a converted transformers model gets: its own class with lottalora's save_pretrained.

transformers' ``save_pretrained`` writes a model's dense weights and its architecture's config;
a converted model saved that way comes back from ``from_pretrained`` as the architecture with
fresh random weights where the seeds were. So ``convert`` (and ``lottalora.from_pretrained``)
change the class of the model in place, as FSDP2's ``fully_shard`` does, to a subclass made for
it: ``SeededPreTrainedModel`` first, then the model's class. The subclass has the class's name,
module and qualified name (``type(model).__name__`` is still ``LlamaForCausalLM``; transformers'
checks that read the class's module keep working); only ``save_pretrained`` differs, and
``push_to_hub`` and ``Trainer`` save through it (and ``resize_token_embeddings`` refuses a
seeded output head before it changes anything). Nothing is patched on transformers' classes:
other models of the same class are untouched. ``merge_and_unload`` gives the model its class
back. Instances deepcopy and pickle as transformers models do (``__reduce_ex__`` rebuilds the
subclass from the class), in processes that import lottalora.

What ``save_pretrained`` writes is the checkpoint floor's job (``lottalora.checkpoint``, above
this one): it installs its writer in ``SeededPreTrainedModel.directory_writer`` when it is
imported, which ``import lottalora`` always does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ClassVar

from torch import nn

from ..nn import Linear

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

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, *args, **kwargs):
        """transformers' resize_token_embeddings, refused before anything changes where the output
        embeddings are a seeded layer: transformers resizes the input embeddings first and then
        fails on the head, leaving a model with more token rows than logits."""
        head = self.get_output_embeddings()
        if isinstance(head, Linear) and (new_num_tokens is not None or pad_to_multiple_of is not None):
            size = new_num_tokens if new_num_tokens is not None else head.out_features
            if pad_to_multiple_of is not None:
                size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
            if size == head.out_features == self.get_input_embeddings().num_embeddings:
                return self.get_input_embeddings()  # what transformers returns; its own path would rebuild the head
            name = next(n for n, m in self.named_modules() if m is head)
            raise ValueError(f"resize_token_embeddings({new_num_tokens}): the output embeddings {name!r} are a "
                             f"seeded layer ({head.out_features} rows drawn from a seed), which cannot be resized; "
                             f"resize before convert, or leave {name!r} out of target_modules")
        return super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, *args, **kwargs)

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
