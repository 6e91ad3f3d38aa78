"""``lottalora.Linear``: a drop-in ``nn.Linear`` whose weight is a seed, plus a LoRA adapter."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ..backbone import BackboneSpec
from ..ops import dense_block, seeded_linear
from ..ops.backend import supported_dtypes
from ..ops.dora import dora_linear, weight_row_norms
from ..ops.precision import accumulation_dtype
from .adapters import (
    DEFAULT_ADAPTER,
    AdaptedLayer,
    AdapterParts,
    LoraAdapter,
    check_adapter_entries,
    check_init_lora_weights,
    check_use_dora,
    init_lora_,
)
from .options import check_alpha, check_dropout, check_flag, check_rank, lora_scaling
from .state import decode_extra_state, upgrade_legacy_beta


class Linear(AdaptedLayer):
    """y = beta * x @ W_seed^T + scaling * (x @ lora_A^T) @ lora_B^T + bias.

    W_seed (out_features x in_features) is drawn from (seed, stream, init) by the backbone
    stream (docs/backbone.md) and regenerated inside the kernels at every call: it is never a
    parameter, buffer or state_dict entry. ``stream_version=None`` takes the newest stream that
    provides ``init`` (``init=None``: stream 2's binary backbone, +-1/sqrt(in_features) built for
    the tensor cores; ``init="gaussian"``: stream 1); ``stream_version=1`` reproduces layers
    made before stream 2 bit for bit. Trainable: lora_A (rank, in_features),
    Kaiming-uniform; lora_B (out_features, rank), zeros; beta (1,), one value starting at 1.0
    (a 1-element 1-D tensor, not 0-dim, so that FSDP2 can shard it; state_dicts and checkpoints
    written with the older 0-dim beta load into it); bias
    (out_features,), nn.Linear's init. With rank=0 the layer is frozen random plus beta and bias
    (lora_A and lora_B are None). train_beta=False keeps beta a parameter (it stays in the
    state_dict) with requires_grad=False, so it stays at its value: the paper's fixed-beta runs.

    scaling = alpha / rank, or alpha / sqrt(rank) with use_rslora; alpha=None means alpha=rank.
    init_lora_weights (PEFT's values): True (Kaiming-uniform A, zero B), "gaussian" (A ~ N(0,
    1/rank^2), zero B), "orthogonal" (B @ A = 0 from one random orthogonal matrix, even ranks) or
    False (B random too); PiSSA, OLoRA, LoftQ and the others that decompose a pretrained weight
    are refused by name. Input: (*, in_features); output: (*, out_features).

    lora_A / lora_B are the default adapter; ``add_adapter`` adds named ones over the same
    backbone and ``set_adapter`` picks the one the forward adds (``lottalora.nn.adapters``).
    ``forward(x, adapter_names=[...])`` picks one per row of x's first dimension (PEFT's mixed
    batch): the backbone product runs once for the whole batch.

    use_dora=True (PEFT's DoRA, rank >= 1): the default adapter's weight is split into a
    direction and a trained magnitude per output row, ``lora_magnitude`` (out_features,):
    y = (m / n) * (beta x W_seed^T + scaling (x A^T) B^T) + bias, n = ||beta W_seed + scaling B
    A|| per row, detached in backward as PEFT does; m starts at n (the row norms of beta W_seed
    while B = 0). n is computed without W_seed (``lottalora.ops.dora``). Named adapters stay
    plain LoRA; a mixed batch and tensor parallelism refuse a DoRA layer.
    """

    # Set by lottalora.convert on a layer it made from transformers' Conv1D (GPT-2), so that
    # merge_and_unload gives the architecture its Conv1D back.
    merges_into_conv1d: bool = False


    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, rank: int = 8,
        alpha: float | None = None, use_rslora: bool = False, seed: int = 0, stream: int = 0,
        init: str | None = None, stream_version: int | None = None, train_beta: bool = True,
        lora_dropout: float = 0.0, init_lora_weights: bool | str = True, use_dora: bool = False, device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_rank(rank)
        alpha = check_alpha(alpha) if alpha is not None else float(rank)
        check_flag(train_beta, "train_beta")
        check_flag(bias, "bias")
        check_flag(use_rslora, "use_rslora")
        check_use_dora(use_dora, rank)
        factory = {"device": device, "dtype": dtype}
        if dtype is not None and dtype not in supported_dtypes("torch"):  # the widest backend's
            raise TypeError(f"dtype must be one of {supported_dtypes('torch')}, got {dtype}")
        self._spec = BackboneSpec(seed, stream, in_features, out_features, init, stream_version)
        self.rank = rank
        self.alpha = alpha
        self.use_rslora = use_rslora
        self.lora_dropout = check_dropout(lora_dropout)
        self.init_lora_weights = check_init_lora_weights(init_lora_weights)
        if rank > 0:
            self.lora_A = nn.Parameter(torch.empty((rank, in_features), **factory))
            self.lora_B = nn.Parameter(torch.empty((out_features, rank), **factory))
        else:
            self.register_parameter("lora_A", None)
            self.register_parameter("lora_B", None)
        self.beta = nn.Parameter(torch.ones(1, **factory), requires_grad=train_beta)
        if use_dora:
            self.lora_magnitude = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("lora_magnitude", None)
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
        holding this layer's parameters goes on unchanged. With DoRA the trained magnitude is kept:
        each row of the new adapted weight (beta W_seed + scaling B A over the new backbone) has
        norm m. ``lottalora.reseed`` does it for a whole model."""
        self._spec = dataclasses.replace(self._spec, seed=seed)

    @property
    def use_dora(self) -> bool:
        """Whether the default adapter is DoRA (``lora_magnitude`` is its magnitude vector)."""
        return self.lora_magnitude is not None

    @property
    def scaling(self) -> float:
        """The factor on the low-rank product: alpha / rank (or / sqrt(rank) with rsLoRA)."""
        return lora_scaling(self.rank, self.alpha, self.use_rslora)

    def reset_parameters(self) -> None:
        """A and B as ``init_lora_weights`` says (True: PEFT's Kaiming-uniform A, a=sqrt(5), and
        B = 0), beta = 1, bias as nn.Linear, and with DoRA the magnitude as the row norms of beta *
        W_seed + scaling * B A (PEFT's: of W0 alone when B = 0). Named adapters are left as they are."""
        if self.lora_A is not None:
            init_lora_(self.lora_A, self.lora_B, self.init_lora_weights)
        with torch.no_grad():
            self.beta.fill_(1.0)
            if self.lora_magnitude is not None:
                norms = weight_row_norms(self._spec, self.lora_A, self.lora_B, self.beta, self.scaling)
                self.lora_magnitude.copy_(norms)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def shard(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """(rows, cols): the block of W_seed this rank computes under tensor parallelism
        (``lottalora.distributed.ColwiseParallel`` owns rows, ``RowwiseParallel`` columns), or
        None when the layer computes all of it (always, for a plain Linear)."""
        return None

    def forward(self, x: torch.Tensor, adapter_names: list[str] | None = None) -> torch.Tensor:
        """x: (*, in_features) -> (*, out_features), with the active adapter fused into the op.

        ``adapter_names``: one adapter name per row of x's first dimension ("__base__": the bare
        backbone), PEFT's mixed batch. The backbone term (beta * x @ W_seed^T + bias) is then one
        product for the whole batch, and each group of rows adds its adapter's low-rank term."""
        if adapter_names is not None:
            names = self.check_row_names(x, adapter_names)
            if self.use_dora and DEFAULT_ADAPTER in names:
                raise ValueError("adapter_names (a mixed batch) with the DoRA default adapter is not supported: run "
                                 "the DoRA rows in a batch of their own (PEFT refuses DoRA in a mixed batch too)")
            out = seeded_linear(x, self._spec, None, None, self.beta, self.bias, 0.0)
            return self.add_row_terms(x, out, names)
        parts = self.active_adapter_parts()
        if parts is None:
            return seeded_linear(x, self._spec, None, None, self.beta, self.bias, 0.0)
        if self.use_dora and self.active_adapter == DEFAULT_ADAPTER:
            return dora_linear(x, self._spec, parts.lora_A, parts.lora_B, self.beta, self.bias, parts.scaling,
                               self.lora_magnitude, lora_input=self.adapter_input(x, parts))
        return seeded_linear(x, self._spec, parts.lora_A, parts.lora_B, self.beta, self.bias, parts.scaling,
                             lora_input=self.adapter_input(x, parts))

    def new_adapter(self, **options) -> LoraAdapter:
        """A named adapter of this layer's shapes: lora_A (rank, in_features), lora_B (out_features, rank)."""
        return LoraAdapter(self.in_features, self.out_features, **options)

    def low_rank(self, x: torch.Tensor, parts: AdapterParts) -> torch.Tensor:
        """scaling * (x @ lora_A^T) @ lora_B^T, accumulated as the op accumulates, in x's dtype."""
        compute = accumulation_dtype(x.dtype)
        xa = x.to(compute) @ parts.lora_A.to(compute).T
        return (parts.scaling * (xa @ parts.lora_B.to(compute).T)).to(x.dtype)

    @property
    def dense_weight_shape(self) -> tuple[int, int]:
        """(out_features, in_features): nn.Linear's weight shape, W_seed's."""
        return self.out_features, self.in_features

    def backbone_weight(self, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """The dense W_seed (out_features, in_features), regenerated now and never cached.

        float32 by default (the stream's native precision; stream 2's values are exactly
        +-1/sqrt(in_features) in float32); ``dtype`` rounds it to that dtype. Defaults to the
        device of the layer's parameters.
        """
        w = dense_block(self._spec, device=device if device is not None else self.beta.device)
        return w.to(dtype) if dtype is not None else w

    def check_state_dict(self, state_dict, prefix: str = "") -> None:
        """ValueError naming this layer unless the entries of ``state_dict`` under ``prefix``
        that are present fit it (shape, rank, floating-point tensors, extra state); a 0-dim beta
        of lottalora 0.1 counts as its one-element form. Loads nothing."""
        own_keys = [prefix + name for name in (*self._parameters, "_extra_state")]
        entries = {key: state_dict[key] for key in own_keys if key in state_dict}  # never the caller's dict
        upgrade_legacy_beta(entries, prefix + "beta")
        try:
            self._check_loadable(entries, prefix)
            for name, adapter in self.named_adapters.items():
                check_adapter_entries(adapter, state_dict, f"{prefix}lora_adapters.{name}.")
        except ValueError as exc:
            where = f"lottalora.Linear {prefix[:-1]!r}" if prefix else "lottalora.Linear"
            raise ValueError(f"{where}: {exc}") from None

    def _check_loadable(self, state_dict, prefix: str) -> None:
        key = prefix + "_extra_state"
        if key in state_dict:
            self._check_fits(decode_extra_state(state_dict[key]))
        for name, param in self._parameters.items():
            key = prefix + name
            if param is None or key not in state_dict:
                continue
            value = state_dict[key]
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{name} must be a floating-point tensor, got {got}")
            if value.shape != param.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)} in the state_dict, this layer's is "
                                 f"{tuple(param.shape)} (rank {self.rank})")

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, rank={self.rank}, alpha={self.alpha:g}, "
            f"rslora={self.use_rslora}, init={self.init!r}, stream_version={self.stream_version}, "
            f"seed={self.seed}, stream={self.stream}"
            + ("" if self.train_beta else ", train_beta=False")
            + (f", lora_dropout={self.lora_dropout:g}" if self.lora_dropout else "")
            + ("" if self.init_lora_weights is True else f", init_lora_weights={self.init_lora_weights!r}")
            + (", use_dora=True" if self.use_dora else "")
            + ("" if self.active_adapter == "default" else f", active_adapter={self.active_adapter!r}")
            + (f", shard=rows {self.shard[0]} cols {self.shard[1]}" if self.shard is not None else "")
        )
