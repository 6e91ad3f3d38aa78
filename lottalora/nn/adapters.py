"""Named LoRA adapters over one seeded backbone: the machinery every seeded layer kind shares.

A seeded layer has its default adapter as its own parameters (``lora_A``, ``lora_B``: the
state_dict keys of every checkpoint so far) and may hold more, each with its own rank, alpha,
rsLoRA and dropout, in ``lora_adapters`` (a ModuleDict made when the first one is added, so a
layer without extra adapters has exactly the modules and keys it always had). One adapter is
active (or none: the bare backbone); a batch can also pick one per row (PEFT's
``adapter_names``), and then the backbone product runs once for the whole batch and only the
low-rank terms differ per row.

``AdaptedLayer`` is the base class that holds all of it; a layer kind (``Linear`` today, a
seeded convolution or DoRA later) supplies its adapter's shapes (``new_adapter``) and its
low-rank product (``low_rank``), and calls ``active_adapter_parts`` / ``row_groups`` from its
forward.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

import torch
from torch import nn

from .dense_guard import drop_dense_guard, guard_transformers_checkpoint
from .options import check_alpha, check_dropout, check_flag, check_rank, lora_scaling
from .state import LayerState, decode_extra_state, extra_state, upgrade_legacy_beta
from .weight_stand_in import weight_stand_in

DEFAULT_ADAPTER = "default"
# PEFT's name, in a mixed batch's adapter_names, for a row that runs the bare backbone.
BASE_ROW = "__base__"
_ADAPTER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ADAPTER_EXTRA_STATE_LAYOUT = 1

# PEFT's init_lora_weights values that make sense over a random backbone: True (Kaiming-uniform
# A, zero B), "gaussian" (A ~ N(0, 1/rank^2), zero B), "orthogonal" (A and B from one random
# orthogonal matrix, B @ A = 0) and False (A and B both nn.Linear's init: the adapter does not
# start at zero).
INIT_LORA_WEIGHTS = (True, False, "gaussian", "orthogonal")
# PEFT's values that decompose or fit a pretrained weight W0 (or its activations / gradients):
# a seeded backbone is random, so there is nothing in it worth decomposing.
_NEEDS_PRETRAINED = {
    "pissa": "PiSSA initializes A and B from the principal singular vectors of the pretrained weight W0",
    "olora": "OLoRA initializes A and B from a QR decomposition of the pretrained weight W0",
    "loftq": "LoftQ initializes A and B to correct the quantization error of the pretrained weight W0",
    "corda": "CorDA initializes A and B from W0 decomposed along a pretrained model's activation covariance",
    "eva": "EVA initializes A from the SVD of a pretrained model's activations",
    "mica": "MiCA initializes B from the minor singular vectors of the pretrained weight W0",
    "lora_ga": "LoRA-GA initializes A and B from the gradients of the pretrained weight W0",
}


def check_init_lora_weights(value: object) -> bool | str:
    """``value`` if it is one of ``INIT_LORA_WEIGHTS``; ValueError otherwise, giving the reason
    for PEFT's values that need a pretrained weight (PiSSA, OLoRA, LoftQ, ...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        key = value.lower()
        if key in ("gaussian", "orthogonal"):
            return key
        family = "pissa" if key.startswith("pissa") else "corda" if key.startswith("corda") else key
        if family in _NEEDS_PRETRAINED:
            raise ValueError(f"init_lora_weights={value!r} is refused: {_NEEDS_PRETRAINED[family]}, and a seeded "
                             "backbone is random, frozen and never stored: there is no pretrained W0 to "
                             f"decompose. Use one of {INIT_LORA_WEIGHTS}")
    raise ValueError(f"init_lora_weights must be one of {INIT_LORA_WEIGHTS}, got {value!r}")


def init_lora_(lora_A: torch.Tensor, lora_B: torch.Tensor, init_lora_weights: bool | str) -> None:
    """Initialize an adapter's lora_A (rank, fan_in) and lora_B (fan_out, rank) in place, as
    PEFT's ``init_lora_weights`` value does (``INIT_LORA_WEIGHTS``)."""
    rank = lora_A.shape[0]
    if lora_A.device.type == "meta":  # nothing to fill yet: materialize initializes it
        return
    with torch.no_grad():
        if init_lora_weights == "orthogonal":
            if rank % 2:
                raise ValueError(f"init_lora_weights='orthogonal' needs an even rank, got rank {rank}")
            # Rows of one random orthogonal matrix, split in two: B @ A = 0 (to rounding) at the start.
            q, _ = torch.linalg.qr(torch.randn(rank, rank, device=lora_A.device, dtype=torch.float32))
            a = torch.randn(lora_A.shape[1], rank // 2, device=lora_A.device) @ q[0::2]
            b = torch.randn(rank // 2, lora_B.shape[0], device=lora_B.device).T @ q[1::2]
            lora_A.copy_(a.T / 10.0)
            lora_B.copy_(b / 10.0)
            return
        if init_lora_weights == "gaussian":
            nn.init.normal_(lora_A, std=1 / rank)
        else:
            nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))
        if init_lora_weights is False:
            nn.init.kaiming_uniform_(lora_B, a=math.sqrt(5))  # nn.Linear(rank, fan_out)'s init
        else:
            nn.init.zeros_(lora_B)


def check_use_dora(use_dora: object, rank: int) -> bool:
    """``use_dora`` or TypeError / ValueError: a bool, True only with an adapter (rank >= 1)."""
    if check_flag(use_dora, "use_dora") and rank == 0:
        raise ValueError("use_dora=True needs an adapter (rank >= 1): DoRA rescales the adapted weight, and a "
                         "rank-0 layer has none")
    return use_dora


def check_adapter_name(name: object) -> str:
    """``name`` or ValueError: an identifier (letters, digits, underscores; not a digit first),
    other than ``BASE_ROW``."""
    if not isinstance(name, str) or not _ADAPTER_NAME.fullmatch(name) or name == BASE_ROW:
        raise ValueError(f"adapter name must be an identifier (letters, digits and underscores, not starting "
                         f"with a digit) other than {BASE_ROW!r}, got {name!r}")
    return name


def _float64_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


def _bits_float64(word: int) -> float:
    return struct.unpack("<d", struct.pack("<q", word))[0]


@dataclass(frozen=True)
class AdapterParts:
    """What a forward needs of one adapter: lora_A (rank, fan_in), lora_B (fan_out, rank), the
    scaling and the dropout on its input."""

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    scaling: float
    lora_dropout: float


class LoraAdapter(nn.Module):
    """A named adapter beside a seeded layer's default one: lora_A (rank, fan_in), lora_B
    (fan_out, rank), scaling = alpha / rank (alpha / sqrt(rank) with use_rslora; alpha=None
    means alpha=rank), dropout on its input while training. rank >= 1. Its "_extra_state" holds
    rank, alpha and use_rslora."""

    def __init__(self, fan_in: int, fan_out: int, *, rank: int, alpha: float | None = None, use_rslora: bool = False,
                 lora_dropout: float = 0.0, init_lora_weights: bool | str = True, device=None, dtype=None) -> None:
        super().__init__()
        if check_rank(rank) == 0:
            raise ValueError("a named adapter needs rank >= 1, got rank 0")
        self.rank = rank
        self.alpha = check_alpha(alpha) if alpha is not None else float(rank)
        self.use_rslora = check_flag(use_rslora, "use_rslora")
        self.lora_dropout = check_dropout(lora_dropout)
        self.init_lora_weights = check_init_lora_weights(init_lora_weights)
        self.lora_A = nn.Parameter(torch.empty((rank, fan_in), device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty((fan_out, rank), device=device, dtype=dtype))
        self.reset_parameters()

    @property
    def scaling(self) -> float:
        return lora_scaling(self.rank, self.alpha, self.use_rslora)

    def reset_parameters(self) -> None:
        """lora_A and lora_B as ``init_lora_weights`` says (``init_lora_``)."""
        init_lora_(self.lora_A, self.lora_B, self.init_lora_weights)

    def parts(self) -> AdapterParts:
        return AdapterParts(self.lora_A, self.lora_B, self.scaling, self.lora_dropout)

    def get_extra_state(self) -> torch.Tensor:
        return adapter_extra_state(self.rank, self.alpha, self.use_rslora)

    def set_extra_state(self, state) -> None:
        rank, alpha, use_rslora = decode_adapter_state(state)
        if rank != self.rank:
            raise ValueError(f"state is for a rank-{rank} adapter, this adapter has rank {self.rank}")
        self.alpha, self.use_rslora = alpha, use_rslora

    def extra_repr(self) -> str:
        return (f"rank={self.rank}, alpha={self.alpha:g}, rslora={self.use_rslora}"
                + (f", lora_dropout={self.lora_dropout:g}" if self.lora_dropout else "")
                + ("" if self.init_lora_weights is True else f", init_lora_weights={self.init_lora_weights!r}"))


def adapter_extra_state(rank: int, alpha: float, use_rslora: bool) -> torch.Tensor:
    """A named adapter's "_extra_state": int64 [layout (1), rank, alpha's float64 bit pattern,
    use_rslora (0 or 1)]."""
    return torch.tensor([ADAPTER_EXTRA_STATE_LAYOUT, rank, _float64_bits(alpha), int(use_rslora)], dtype=torch.int64)


def check_adapter_entries(adapter: LoraAdapter, state_dict, prefix: str) -> None:
    """ValueError (naming the adapter) unless the entries of ``state_dict`` under ``prefix`` that
    are present fit ``adapter``: floating-point lora_A / lora_B of its shapes, and an extra
    state of its rank. Loads nothing."""
    name = prefix.rstrip(".").rpartition(".")[2]
    key = prefix + "_extra_state"
    if key in state_dict:
        rank = decode_adapter_state(state_dict[key])[0]
        if rank != adapter.rank:
            raise ValueError(f"adapter {name!r}: state is for rank {rank}, this adapter has rank {adapter.rank}")
    for param_name, param in adapter.named_parameters(recurse=False):
        value = state_dict.get(prefix + param_name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.shape != param.shape:
            got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"adapter {name!r}: {param_name} must be a floating-point tensor of shape "
                             f"{tuple(param.shape)} (rank {adapter.rank}), got {got}")


def decode_adapter_state(state: object) -> tuple[int, float, bool]:
    """(rank, alpha, use_rslora) of a named adapter's "_extra_state"; ValueError if it is not one."""
    if not isinstance(state, torch.Tensor) or state.dtype != torch.int64 or tuple(state.shape) != (4,):
        got = f"{state.dtype} tensor of shape {tuple(state.shape)}" if isinstance(state, torch.Tensor) \
            else type(state).__name__
        raise ValueError(f"a named adapter's extra state must be an int64 tensor of 4 values, got a {got}")
    layout, rank, alpha_bits, rslora = (int(v) for v in state.tolist())
    if layout != ADAPTER_EXTRA_STATE_LAYOUT or rank < 1 or rslora not in (0, 1):
        raise ValueError(f"corrupt named adapter extra state {state.tolist()} (layout {ADAPTER_EXTRA_STATE_LAYOUT}, "
                         "rank >= 1, use_rslora 0 or 1)")
    try:
        alpha = check_alpha(_bits_float64(alpha_bits))
    except ValueError as exc:
        raise ValueError(f"corrupt alpha in a named adapter's extra state: {exc}") from None
    return rank, alpha, bool(rslora)


class AdaptedLayer(nn.Module):
    """Base class of seeded layers: the default adapter (the layer's own ``lora_A``, ``lora_B``,
    ``rank``, ``alpha``, ``use_rslora``, ``lora_dropout``), the named ones, which one is active,
    and a batch whose rows pick theirs. A subclass registers ``lora_A`` / ``lora_B`` (None at
    rank 0) and defines ``new_adapter`` and ``low_rank``."""

    # None: the bare backbone (lottalora.disable_adapter); otherwise a name in adapter_names().
    active_adapter: str | None = DEFAULT_ADAPTER

    @property
    def weight(self) -> torch.Tensor:
        """A stand-in for the weight the dense layer would hold (``lottalora.nn.weight_stand_in``):
        shape ``dense_weight_shape``, the layer's dtype and device, no values (reading its
        metadata works, as transformers' T5 does; using its values raises). ``backbone_weight()``
        regenerates the dense W_seed."""
        beta = self._parameters["beta"]  # not nn.Module's __getattr__: read in every T5 forward
        return weight_stand_in(self.dense_weight_shape, beta.dtype, beta.device)

    # Everything that makes the layer's function besides its tensors (seed, stream, init, rank,
    # alpha, use_rslora) travels in the state_dict as one small int64 tensor ("_extra_state").
    def get_extra_state(self) -> torch.Tensor:
        return extra_state(self._spec, self.rank, self.alpha, self.use_rslora)

    def set_extra_state(self, state) -> None:
        decoded = decode_extra_state(state)
        self._check_fits(decoded)
        self._spec = decoded.spec
        if decoded.alpha is not None:
            self.alpha, self.use_rslora = decoded.alpha, decoded.use_rslora

    def _check_fits(self, decoded: LayerState) -> None:
        """ValueError unless a decoded state describes a layer of this one's backbone and rank."""
        s = decoded.spec
        if (s.in_features, s.out_features) != (self.in_features, self.out_features):
            raise ValueError(
                f"state is for a {s.out_features} x {s.in_features} backbone, this layer's is "
                f"{self.out_features} x {self.in_features}"
            )
        if decoded.rank is not None and decoded.rank != self.rank:
            raise ValueError(f"state is for a rank-{decoded.rank} layer, this layer has rank {self.rank}")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        guard_transformers_checkpoint(destination, prefix)  # only for transformers' checkpoints

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # nn.Module copies the tensors one by one and only then sets the extra state: the entries
        # present are checked here first (the layer kind's ``check_state_dict``), so a bad one
        # leaves the whole layer as it was. Missing and unexpected entries are left to nn.Module
        # (it does not tell a module whether the load is strict). load_state_dict hands each
        # module its own copy of the dict, so replacing the entry leaves the caller's as it was.
        upgrade_legacy_beta(state_dict, prefix + "beta")
        drop_dense_guard(state_dict, prefix)
        self.check_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def check_state_dict(self, state_dict, prefix: str = "") -> None:  # pragma: no cover - every kind defines it
        raise NotImplementedError

    def new_adapter(self, **options) -> LoraAdapter:  # pragma: no cover - every layer kind defines it
        raise NotImplementedError

    def low_rank(self, x: torch.Tensor, parts: AdapterParts) -> torch.Tensor:  # pragma: no cover
        """scaling * (adapter input @ lora_A^T) @ lora_B^T for this layer kind, in x's dtype."""
        raise NotImplementedError

    @property
    def named_adapters(self) -> dict[str, LoraAdapter]:
        """{name: LoraAdapter} of the adapters besides the default one."""
        extra = self._modules.get("lora_adapters")
        return dict(extra.items()) if extra is not None else {}

    def adapter_names(self) -> list[str]:
        """"default" (when it has rank >= 1) and the named adapters, in the order they were added."""
        return ([DEFAULT_ADAPTER] if self.rank > 0 else []) + list(self.named_adapters)

    def adapter_parts(self, name: str) -> AdapterParts | None:
        """The tensors and scaling of adapter ``name``; None for the default one at rank 0.
        KeyError (naming the layer's adapters) for a name the layer does not hold."""
        if name == DEFAULT_ADAPTER:
            if self.lora_A is None:
                return None
            return AdapterParts(self.lora_A, self.lora_B, self.scaling, self.lora_dropout)
        adapter = self.named_adapters.get(name)
        if adapter is None:
            raise KeyError(f"this layer has no adapter {name!r} (it has {self.adapter_names()})")
        return adapter.parts()

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        """lora_A and lora_B of adapter ``name`` ([] for the default one at rank 0), and the
        default adapter's DoRA magnitude where the layer has one (it trains with its adapter)."""
        parts = self.adapter_parts(name)
        if parts is None:
            return []
        magnitude = getattr(self, "lora_magnitude", None) if name == DEFAULT_ADAPTER else None
        return [parts.lora_A, parts.lora_B] + ([magnitude] if magnitude is not None else [])

    def add_adapter(self, name: str, *, rank: int, alpha: float | None = None, use_rslora: bool = False,
                    lora_dropout: float = 0.0, init_lora_weights: bool | str = True,
                    use_dora: bool = False) -> LoraAdapter:
        """Add adapter ``name`` (rank >= 1) on this layer's backbone, on the device and in the
        dtype of its beta, frozen (``set_adapter`` trains the active one). Returns it. Named
        adapters are plain LoRA: ``use_dora=True`` is refused (only a layer's default adapter
        can be DoRA, ``Linear(use_dora=True)``)."""
        check_adapter_name(name)
        if check_use_dora(use_dora, rank):
            raise ValueError(f"add_adapter({name!r}, use_dora=True): named DoRA adapters are not supported; only "
                             "a layer's default adapter can be DoRA (lottalora.Linear(..., use_dora=True))")
        if name == DEFAULT_ADAPTER or name in self.named_adapters:
            raise ValueError(f"this layer already has an adapter {name!r}")
        adapter = self.new_adapter(rank=rank, alpha=alpha, use_rslora=use_rslora, lora_dropout=lora_dropout,
                                   init_lora_weights=init_lora_weights, device=self.beta.device,
                                   dtype=self.beta.dtype)
        adapter.requires_grad_(False)
        adapter.train(self.training)
        if "lora_adapters" not in self._modules:
            self.lora_adapters = nn.ModuleDict()
        self.lora_adapters[name] = adapter
        return adapter

    def delete_adapter(self, name: str) -> None:
        """Remove named adapter ``name``; the active one falls back to the default adapter."""
        if name == DEFAULT_ADAPTER:
            raise ValueError("the default adapter is the layer's own lora_A / lora_B and cannot be deleted")
        if name not in self.named_adapters:
            raise KeyError(f"this layer has no adapter {name!r} (it has {self.adapter_names()})")
        del self.lora_adapters[name]
        if not self.lora_adapters:
            del self.lora_adapters
        if self.active_adapter == name:
            self.active_adapter = DEFAULT_ADAPTER

    def set_adapter(self, name: str | None) -> None:
        """Make ``name`` the adapter the forward adds (None: the bare backbone). A name the layer
        does not hold is refused (``lottalora.set_adapter`` leaves such layers on the backbone)."""
        if name is not None and name != DEFAULT_ADAPTER and name not in self.named_adapters:
            raise KeyError(f"this layer has no adapter {name!r} (it has {self.adapter_names()})")
        self.active_adapter = name

    def active_adapter_parts(self) -> AdapterParts | None:
        """The parts of the active adapter, or None (no adapter: disabled, or rank-0 default)."""
        return None if self.active_adapter is None else self.adapter_parts(self.active_adapter)

    def adapter_input(self, x: torch.Tensor, parts: AdapterParts) -> torch.Tensor | None:
        """The adapter's own input when its dropout applies (training), else None (x itself)."""
        if parts.lora_dropout > 0 and self.training:
            return nn.functional.dropout(x, parts.lora_dropout, training=True)
        return None

    def check_row_names(self, x: torch.Tensor, adapter_names) -> list[str]:
        """``adapter_names`` as a list, after checking it: one name per row of ``x`` (its first
        dimension), each an adapter of this layer or ``BASE_ROW``."""
        if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
            raise TypeError(f"adapter_names must be a list of adapter names, one per row, got {adapter_names!r}")
        names = list(adapter_names)
        if x.dim() < 2 or x.shape[0] != len(names):
            raise ValueError(f"adapter_names has {len(names)} names but the input has shape {tuple(x.shape)}: one "
                             "name per row of its first dimension is expected")
        known = set(self.adapter_names()) | {BASE_ROW, DEFAULT_ADAPTER}
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(f"adapter_names names {unknown}, which this layer does not hold (it has "
                             f"{self.adapter_names()}, and {BASE_ROW!r} for the bare backbone)")
        return names

    def add_row_terms(self, x: torch.Tensor, out: torch.Tensor, names: list[str]) -> torch.Tensor:
        """``out`` (the backbone's output for the whole batch) plus, for each group of rows that
        picks the same adapter, that adapter's low-rank term on those rows."""
        for name in dict.fromkeys(names):
            parts = None if name == BASE_ROW else self.adapter_parts(name)
            if parts is None:
                continue
            rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=x.device)
            x_rows = x.index_select(0, rows)
            lora_input = self.adapter_input(x_rows, parts)
            term = self.low_rank(x_rows if lora_input is None else lora_input, parts)
            out = out.index_add(0, rows, term.to(out.dtype))
        return out
