"""The seeded op's arguments checked once, at the public boundary: every TypeError and ValueError
names the argument, the value and what was expected. Past this point the op assumes valid input.
"""

from __future__ import annotations

import math
import numbers

import torch

from ..backbone import BackboneBlock, BackboneSpec
from .backend import resolve_backend, supported_dtypes
from .precision import autocast_cast, autocast_enabled

MATERIALIZE_HINT = " (a model built on the meta device needs lottalora.materialize(model, device) before it runs)"


def _check_param(name: str, tensor: torch.Tensor | None, shape: tuple, x: torch.Tensor) -> None:
    if tensor is None:
        return
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if tensor.device != x.device:
        hint = MATERIALIZE_HINT if tensor.device.type == "meta" else ""
        raise ValueError(f"{name} is on {tensor.device} but the input is on {x.device}{hint}")
    if name != "beta":
        check_param_dtype(name, tensor.dtype, x.dtype)


def check_input_dtype(x: torch.Tensor, backend: str) -> None:
    """TypeError unless x's dtype is one ``backend`` computes in (an integer input would give
    truncated or wrapped integer outputs)."""
    dtypes = supported_dtypes(backend)
    if x.dtype not in dtypes:
        hint = ""
        if x.dtype in supported_dtypes("torch"):  # float64 on the Triton backend
            hint = " (the torch backend computes it, on any device: LOTTALORA_BACKEND=torch)"
        raise TypeError(f"input dtype must be one of {dtypes} on the {backend} backend, got {x.dtype}{hint}")


def check_param_dtype(name: str, dtype: torch.dtype, input_dtype: torch.dtype) -> None:
    """TypeError unless the parameter ``name``'s dtype is the input's, as nn.Linear's and
    nn.Conv's must be (inside autocast: both as autocast casts them)."""
    if dtype != input_dtype:
        raise TypeError(f"{name} has dtype {dtype} but the input has {input_dtype}: they must match")


def _check_types(x, spec, lora_A, lora_B, beta, bias, scale, lora_input) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(spec, (BackboneSpec, BackboneBlock)):
        raise TypeError(f"spec must be a lottalora.BackboneSpec, got {type(spec).__name__} {spec!r}")
    for name, t in (("lora_A", lora_A), ("lora_B", lora_B), ("bias", bias), ("lora_input", lora_input)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if not isinstance(beta, torch.Tensor):
        raise TypeError(f"beta must be a one-element torch.Tensor, got {type(beta).__name__} {beta!r}")
    if not beta.is_floating_point():
        raise TypeError(f"beta must be a floating-point tensor, got dtype {beta.dtype}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__} {scale!r}")
    # Under torch.compile(dynamic=True) a layer's scaling is a traced number whose finiteness
    # cannot be asked (a bool out of the graph), and dynamo shows it as a plain float, so no
    # compiled call asks; the layer checked its scaling when it was set, eager calls check here.
    if not torch.compiler.is_compiling() and not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale!r}")


def _input_shape_error(block: BackboneBlock, x: torch.Tensor) -> ValueError:
    if block.is_whole:
        return ValueError(f"input must have shape (*, in_features={block.in_features}), got {tuple(x.shape)}")
    return ValueError(f"input must have shape (*, {block.in_features}) for cols={block.cols}, got {tuple(x.shape)}")


def check_seeded_call(
    x: torch.Tensor, spec: BackboneSpec | BackboneBlock, lora_A: torch.Tensor | None, lora_B: torch.Tensor | None,
    beta: torch.Tensor, bias: torch.Tensor | None, scale: float, lora_input: torch.Tensor | None,
) -> tuple:
    """The arguments of ``seeded_linear`` checked, with autocast's casts applied:
    (x, block, lora_A, lora_B, bias, lora_input, scale as a float, backend). ``spec`` is a whole
    layer's BackboneSpec or a BackboneBlock of one."""
    _check_types(x, spec, lora_A, lora_B, beta, bias, scale, lora_input)
    block = spec if isinstance(spec, BackboneBlock) else BackboneBlock.whole(spec)
    device_type = x.device.type
    if autocast_enabled(device_type):
        # As nn.Linear under autocast: compute in the autocast dtype; gradients flow back
        # through the casts to parameters kept in their own dtype.
        dtype = torch.get_autocast_dtype(device_type)
        x, lora_A, lora_B, bias, lora_input = (autocast_cast(t, dtype) for t in (x, lora_A, lora_B, bias, lora_input))
    if x.dim() == 0 or x.shape[-1] != block.in_features:
        raise _input_shape_error(block, x)
    backend = resolve_backend(x.device)
    check_input_dtype(x, backend)
    if (lora_A is None) != (lora_B is None):
        raise ValueError("lora_A and lora_B must both be given or both be None")
    rank = lora_A.shape[0] if lora_A is not None else 0
    _check_param("lora_A", lora_A, (rank, block.in_features), x)
    _check_param("lora_B", lora_B, (block.out_features, rank), x)
    _check_param("bias", bias, (block.out_features,), x)
    if beta.numel() != 1:
        raise ValueError(f"beta must have one element, got shape {tuple(beta.shape)}")
    _check_param("beta", beta, tuple(beta.shape), x)
    if lora_input is not None:
        if lora_A is None:
            raise ValueError("lora_input was given to a layer without an adapter (lora_A and lora_B are None)")
        _check_param("lora_input", lora_input, tuple(x.shape), x)
    return x, block, lora_A, lora_B, bias, lora_input, float(scale), backend
