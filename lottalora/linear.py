"""``lottalora.Linear``: a drop-in ``nn.Linear`` whose weight is a seed, plus a LoRA adapter."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from lottalora_kernels import stream_spec as spec_consts

from .backend import resolve_backend
from .functional import seeded_linear
from .stream import BackboneSpec, backbone_block

_EXTRA_STATE_LEN = 8


def extra_state(spec: BackboneSpec) -> torch.Tensor:
    """A layer's state_dict entry "_extra_state": int64 [stream version, seed lo/hi,
    stream lo/hi, init code, in_features, out_features]."""
    seed_lo, seed_hi = spec_consts.split_u64(spec.seed)
    stream_lo, stream_hi = spec_consts.split_u64(spec.stream)
    return torch.tensor([spec.version, seed_lo, seed_hi, stream_lo, stream_hi,
                         spec_consts.INIT_CODES[spec.init], spec.in_features, spec.out_features],
                        dtype=torch.int64)


class Linear(nn.Module):
    """y = beta * x @ W_seed^T + scaling * (x @ lora_A^T) @ lora_B^T + bias.

    W_seed (out_features x in_features) is drawn from (seed, stream, init) by the backbone
    stream (docs/backbone.md) and regenerated inside the kernels at every call: it is never a
    parameter, buffer or state_dict entry. ``stream_version=None`` takes the newest stream that
    provides ``init`` (``init=None``: stream 2's binary backbone, +-1/sqrt(in_features) built for
    the tensor cores; ``init="gaussian"``: stream 1); ``stream_version=1`` reproduces layers
    made before stream 2 bit for bit. Trainable: lora_A (rank, in_features),
    Kaiming-uniform; lora_B (out_features, rank), zeros; beta, a scalar starting at 1.0; bias
    (out_features,), nn.Linear's init. With rank=0 the layer is frozen random plus beta and bias
    (lora_A and lora_B are None). train_beta=False keeps beta a parameter (it stays in the
    state_dict) with requires_grad=False, so it stays at its value: the paper's fixed-beta runs.

    scaling = alpha / rank, or alpha / sqrt(rank) with use_rslora; alpha=None means alpha=rank.
    Input: (*, in_features); output: (*, out_features).
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, rank: int = 8,
        alpha: float | None = None, use_rslora: bool = False, seed: int = 0, stream: int = 0,
        init: str | None = None, stream_version: int | None = None, train_beta: bool = True, device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be an int >= 0, got {rank!r}")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                                  or not math.isfinite(alpha) or alpha <= 0):
            raise ValueError(f"alpha must be a positive finite number or None, got {alpha!r}")
        if not isinstance(train_beta, bool):
            raise TypeError(f"train_beta must be a bool, got {train_beta!r}")
        factory = {"device": device, "dtype": dtype}
        if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(f"dtype must be float32, float16, bfloat16 or float64, got {dtype}")
        self._spec = BackboneSpec(seed, stream, in_features, out_features, init, stream_version)
        self.rank = rank
        self.alpha = float(alpha) if alpha is not None else float(rank)
        self.use_rslora = bool(use_rslora)
        if rank > 0:
            self.lora_A = nn.Parameter(torch.empty((rank, in_features), **factory))
            self.lora_B = nn.Parameter(torch.empty((out_features, rank), **factory))
        else:
            self.register_parameter("lora_A", None)
            self.register_parameter("lora_B", None)
        self.beta = nn.Parameter(torch.ones((), **factory), requires_grad=train_beta)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    # The backbone's identity, read-only: change it by building a new layer, loading state, or
    # re-drawing it with reseed.
    in_features = property(lambda self: self._spec.in_features)
    out_features = property(lambda self: self._spec.out_features)
    seed = property(lambda self: self._spec.seed)
    stream = property(lambda self: self._spec.stream)
    init = property(lambda self: self._spec.init)
    stream_version = property(lambda self: self._spec.version, doc="The backbone stream's version (1 or 2).")
    spec = property(lambda self: self._spec, doc="The layer's BackboneSpec.")

    @property
    def train_beta(self) -> bool:
        """Whether beta is trained (its requires_grad)."""
        return self.beta.requires_grad

    def reseed(self, seed: int) -> None:
        """Re-draw W_seed in place from ``seed`` (a 64-bit unsigned int); everything else of the
        backbone (stream, init, shape) and every parameter stay as they are, so an optimizer
        holding this layer's parameters goes on unchanged. ``lottalora.reseed`` does it for a
        whole model."""
        self._spec = dataclasses.replace(self._spec, seed=seed)

    @property
    def scaling(self) -> float:
        """The factor on the low-rank product: alpha / rank (or / sqrt(rank) with rsLoRA)."""
        if self.rank == 0:
            return 0.0
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def reset_parameters(self) -> None:
        """A as PEFT (Kaiming-uniform, a=sqrt(5)), B = 0, beta = 1, bias as nn.Linear."""
        if self.lora_A is not None:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)
        with torch.no_grad():
            self.beta.fill_(1.0)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (*, in_features) -> (*, out_features)."""
        return seeded_linear(x, self._spec, self.lora_A, self.lora_B, self.beta, self.bias, self.scaling)

    def backbone_weight(self, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """The dense W_seed (out_features, in_features), regenerated now and never cached.

        float32 by default (the stream's native precision; stream 2's values are exactly
        +-1/sqrt(in_features) in float32); ``dtype`` rounds it to that dtype. Defaults to the
        device of the layer's parameters.
        """
        device = torch.device(device) if device is not None else self.beta.device
        if resolve_backend(device) == "triton":
            from lottalora_kernels.backbone_gen import generate_backbone

            w = generate_backbone(self.seed, self.stream, self.in_features, self.init,
                                  (0, self.out_features), (0, self.in_features), device,
                                  version=self.stream_version)
        else:
            w = backbone_block(self._spec, device=device)
        return w.to(dtype) if dtype is not None else w

    # seed, stream and init travel in the state_dict as one small int64 tensor ("_extra_state").
    def get_extra_state(self) -> torch.Tensor:
        return extra_state(self._spec)

    def set_extra_state(self, state) -> None:
        if not isinstance(state, torch.Tensor) or state.dtype != torch.int64 or state.shape != (_EXTRA_STATE_LEN,):
            raise ValueError(
                f"lottalora.Linear extra state must be an int64 tensor of {_EXTRA_STATE_LEN} values, got {state!r}"
            )
        version, seed_lo, seed_hi, stream_lo, stream_hi, init_code, in_f, out_f = (int(v) for v in state.tolist())
        if version not in spec_consts.SUPPORTED_STREAM_VERSIONS:
            raise ValueError(
                f"backbone stream version {version} is not supported by this build "
                f"(supported: {spec_consts.SUPPORTED_STREAM_VERSIONS})"
            )
        if not 0 <= init_code < len(spec_consts.INITS) or \
                spec_consts.INITS[init_code] not in spec_consts.VERSION_INITS[version]:
            raise ValueError(f"unknown init code {init_code} for stream version {version} in state "
                             f"(known: {spec_consts.VERSION_INITS[version]})")
        if (in_f, out_f) != (self.in_features, self.out_features):
            raise ValueError(
                f"state is for a {out_f} x {in_f} backbone, this layer is "
                f"{self.out_features} x {self.in_features}"
            )
        for name, word in (("seed", seed_lo), ("seed", seed_hi), ("stream", stream_lo), ("stream", stream_hi)):
            if not 0 <= word <= 0xFFFFFFFF:
                raise ValueError(f"corrupt {name} word {word} in state")
        self._spec = BackboneSpec(seed_lo | (seed_hi << 32), stream_lo | (stream_hi << 32),
                                  in_f, out_f, spec_consts.INITS[init_code], version)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, rank={self.rank}, alpha={self.alpha:g}, "
            f"rslora={self.use_rslora}, init={self.init!r}, stream_version={self.stream_version}, "
            f"seed={self.seed}, stream={self.stream}"
            + ("" if self.train_beta else ", train_beta=False")
        )
