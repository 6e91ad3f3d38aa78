"""A seeded layer's ``weight``: a stand-in with the backbone's shape, dtype and device, and no values.

A seeded layer holds a seed, not a weight matrix, but code written for ``nn.Linear`` and
``nn.Conv`` reads ``layer.weight`` for what it describes: transformers' T5 feed-forward (and
mT5, UMT5, LongT5, Switch, ...) casts its hidden states to ``self.wo.weight.dtype`` in every
forward, vision towers read ``patch_embedding.weight.dtype``. The stand-in answers such reads
(shape, dtype, device, ``isinstance(..., torch.Tensor)``); anything that would use its values
(a product, an in-place init, ``.data``, ``.T``) raises, naming ``backbone_weight()``, rather than
computing with numbers that are not the backbone's or changing nothing while seeming to. It is
looked up at each read, so it follows the layer's moves and casts, and it is never a parameter:
state dicts, optimizers and FSDP do not see it. torch.compile traces it as it runs eagerly
(metadata reads are constants of the graph; a use of its values raises while tracing).
"""

from __future__ import annotations

import functools

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

_T = torch.Tensor
# What describes a tensor without reading its values: the stand-in serves these methods, and
# every attribute but the views of its values and its gradient, which a backbone never has (the
# compilers read many attributes: is_nested, ...).
_METADATA = frozenset({
    _T.size, _T.dim, _T.numel, _T.nelement, _T.element_size, _T.is_floating_point, _T.is_complex, _T.is_contiguous,
    _T.stride, _T.__len__,
})
_REFUSED_ATTRIBUTES = frozenset({"data", "T", "mT", "H", "mH", "real", "imag", "grad", "_base"})


class WeightStandIn(torch.Tensor):
    """The tensor a seeded layer's ``weight`` reads as (the module docstring): the backbone's
    shape and dtype, the layer's device, no values."""

    # transformers' init functions skip a tensor marked initialized: a model's _init_weights that
    # reaches into its children (CLIP's projections) runs while lottalora.materialize initializes
    # the parent's own tensors, and the backbone is initialized already, by its seed.
    _is_hf_initialized = True

    @staticmethod
    def __new__(cls, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> WeightStandIn:
        # A real meta tensor even while torch.export traces with fake tensors: a fake one cannot be
        # wrapped in a subclass, and the stand-in's reads are constants of the traced graph.
        if torch.compiler.is_dynamo_compiling():  # dynamo traces the subclass; it cannot enter the context
            base = torch.empty(shape, dtype=dtype, device="meta")
        else:
            with unset_fake_temporarily():
                base = torch.empty(shape, dtype=dtype, device="meta")
        stand_in = torch.Tensor._make_subclass(cls, base)
        stand_in._layer_device, stand_in._layer_dtype = torch.device(device), dtype
        return stand_in

    @property
    def device(self) -> torch.device:
        return self._layer_device

    @property
    def dtype(self) -> torch.dtype:  # read in every T5 forward: a plain attribute, not __torch_function__
        return self._layer_dtype

    @property
    def is_cuda(self) -> bool:
        return self._layer_device.type == "cuda"

    @property
    def is_meta(self) -> bool:
        return self._layer_device.type == "meta"

    def __repr__(self, *, tensor_contents=None) -> str:
        return (f"WeightStandIn(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}: a seeded "
                "layer's backbone, regenerated from its seed; backbone_weight() materializes it)")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", repr(func))
        if name == "__get__":  # an attribute's getter
            name = "." + getattr(getattr(func, "__self__", None), "__name__", "attribute")
        if func in _METADATA or (name.startswith(".") and name[1:] not in _REFUSED_ATTRIBUTES):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        raise RuntimeError(f"{name} on a seeded layer's weight: the layer stores a seed, not a weight matrix, and its "
                           "weight is a stand-in with the backbone's shape, dtype and device but no values. Use "
                           "layer.backbone_weight() for the dense backbone (it is regenerated, never stored), or "
                           "layer(x) to compute with it")


@functools.lru_cache(maxsize=256)
def _shared_stand_in(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> WeightStandIn:
    return WeightStandIn(shape, dtype, device)


def weight_stand_in(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> WeightStandIn:
    """A ``WeightStandIn`` of ``shape``, ``dtype`` and ``device``. One per (shape, dtype, device)
    is shared by every layer that asks (it holds nothing of theirs): T5 reads its weights' dtype
    in every forward, and making one each time would cost host time there."""
    if torch.compiler.is_dynamo_compiling():  # dynamo traces the construction, not the cache
        return WeightStandIn(tuple(shape), dtype, device)
    return _shared_stand_in(tuple(shape), dtype, torch.device(device))
