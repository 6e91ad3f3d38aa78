"""``lottalora.Conv1d`` / ``Conv2d``: drop-in ``nn.Conv1d`` / ``nn.Conv2d`` whose weight is a seed.

    y = beta * conv(x, W_seed) + scaling * conv_1x1(conv(dropout(x), lora_A), lora_B) + bias

W_seed is the stream's (out_channels, in_channels // groups * prod(kernel_size)) matrix, the
backbone of ``BackboneSpec(seed, stream, in_features=in_channels // groups * prod(kernel_size),
out_features=out_channels)``, viewed as the conv weight (out_channels, in_channels // groups,
*kernel_size) row-major, as ``weight.view`` does (docs/backbone.md). It is regenerated in
bounded chunks of output channels at every call (``lottalora.ops.conv``), never whole.

The adapter is PEFT's conv LoRA: lora_A a bias-free conv with the layer's kernel, stride,
dilation and groups to ``rank`` channels, lora_B a 1x1 conv back to out_channels, zeros at the
start, grouped as PEFT groups it. Unlike PEFT, lora_A is grouped too (PEFT's takes every input
channel and so cannot be merged into a grouped conv): the low-rank term is then exactly a
conv with the weight ``delta_weight()`` (out_channels, in_channels // groups, *kernel_size),
which ``merge_and_unload`` folds in. For groups = 1 the shapes are PEFT's.

DoRA (``use_dora=True``): PEFT's conv DoRA, a trained magnitude per output channel
(``SeededConv``'s docstring; the norms from ``lottalora.ops.dora``).

Padding: every ``padding_mode`` pads first with F.pad (as nn.Conv does) and then runs the
backbone and lora_A with padding 0, so the adapter sees the padded input too (and merges).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import BackboneSpec
from ..ops import dense_block
from ..ops.backend import supported_dtypes
from ..ops.conv import ConvGeometry, check_conv_dtypes, seeded_conv
from ..ops.dora import combine, combine_dropped, magnitude_scale, weight_row_norms
from ..ops.precision import accumulation_dtype, output_dtype
from .adapters import (
    DEFAULT_ADAPTER,
    AdaptedLayer,
    AdapterParts,
    LoraAdapter,
    check_init_lora_weights,
    check_use_dora,
    init_lora_,
)
from .options import check_alpha, check_dropout, check_flag, check_rank, lora_scaling
from .state import decode_extra_state

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _check_tuple(name: str, value: object, dims: int, minimum: int) -> tuple[int, ...]:
    """``value`` (an int or a tuple of ``dims`` ints, each >= minimum) as a tuple, or ValueError naming it."""
    values = (value,) * dims if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(values, (tuple, list)) and len(values) == dims
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values)):
        raise ValueError(f"{name} must be an int >= {minimum} or a tuple of {dims} such ints, got {value!r}")
    return tuple(values)


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class SeededConv(AdaptedLayer):
    """The seeded convolution of ``dims`` spatial dimensions (``Conv1d``: 1, ``Conv2d``: 2).

    Arguments as nn.Conv*d's (in_channels, out_channels, kernel_size, stride, padding (an int,
    a tuple, "same" or "valid"), dilation, groups, bias, padding_mode) and then
    lottalora.Linear's (rank, alpha, use_rslora, seed, stream, init, stream_version, train_beta,
    lora_dropout, init_lora_weights, use_dora, device, dtype). Trainable: lora_A (rank, in_channels //
    groups, *kernel_size), Kaiming-uniform; lora_B (out_channels, rank // groups, 1, ...), zeros;
    beta (1,); bias (out_channels,), nn.Conv's init. rank must be a multiple of groups. rank=0: no
    adapter (lora_A and lora_B are None). scaling = alpha / rank (alpha / sqrt(rank) with
    use_rslora; alpha=None means alpha=rank). Input (N, in_channels, *spatial) or unbatched
    (in_channels, *spatial); output (N, out_channels, *spatial_out), in the input's dtype
    (inside torch.autocast, the autocast dtype, as nn.Conv's).

    ``in_features`` / ``out_features`` are the backbone matrix's (in_channels // groups *
    prod(kernel_size), out_channels), so model tools that count or check backbones treat a conv
    as the matrix it is.

    use_dora=True (PEFT's conv DoRA, rank >= 1): a trained magnitude per output channel,
    ``lora_magnitude`` (out_channels,): y = (m / n) * (beta conv(x, W_seed) + scaling
    conv_1x1(conv(x, lora_A), lora_B)) + bias along the channel dimension, n the row norms of the
    adapted weight as a matrix, ||beta W_seed + scaling lora_B2d @ lora_A2d|| (the norm over
    in_channels // groups and the kernel of each output channel, PEFT's), detached in backward;
    m starts at n. n is computed from the spec and ``lora_factors_2d`` without W_seed
    (``lottalora.ops.dora``). With lora_dropout in training, PEFT's form: the backbone runs on
    both the input and the dropped input (``lottalora.ops.dora.combine_dropped``).
    """

    dims: int = 0

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1, groups: int = 1,
        bias: bool = True, padding_mode: str = "zeros", *, rank: int = 8, alpha: float | None = None,
        use_rslora: bool = False, seed: int = 0, stream: int = 0, init: str | None = None,
        stream_version: int | None = None, train_beta: bool = True, lora_dropout: float = 0.0,
        use_dora: bool = False, init_lora_weights: bool | str = True, device=None, dtype=None,
    ) -> None:
        super().__init__()
        dims = self.dims
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        _check_positive("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                             f"multiples of groups ({groups})")
        self.kernel_size = _check_tuple("kernel_size", kernel_size, dims, 1)
        self.stride = _check_tuple("stride", stride, dims, 1)
        self.dilation = _check_tuple("dilation", dilation, dims, 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be an int, a tuple of {dims} ints, 'same' or 'valid', got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"padding='same' needs stride 1 (as nn.Conv{dims}d), got stride={stride!r}")
            self.padding = padding
        else:
            self.padding = _check_tuple("padding", padding, dims, 0)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        check_rank(rank)
        check_use_dora(use_dora, rank)
        if rank % groups:
            raise ValueError(f"rank ({rank}) must be a multiple of groups ({groups}): lora_B is a grouped 1x1 conv")
        check_flag(train_beta, "train_beta")
        check_flag(bias, "bias")
        check_flag(use_rslora, "use_rslora")
        if dtype is not None and dtype not in supported_dtypes("torch"):
            raise TypeError(f"dtype must be one of {supported_dtypes('torch')}, got {dtype}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.geometry = ConvGeometry(in_channels, out_channels, self.kernel_size, self.stride, self.dilation, groups)
        self._spec = BackboneSpec(seed, stream, self.geometry.row_width, out_channels, init, stream_version)
        self.rank = rank
        self.alpha = check_alpha(alpha) if alpha is not None else float(rank)
        self.use_rslora = use_rslora
        self.lora_dropout = check_dropout(lora_dropout)
        self.init_lora_weights = check_init_lora_weights(init_lora_weights)
        if self.init_lora_weights == "orthogonal" and groups > 1:
            raise ValueError("init_lora_weights='orthogonal' needs groups=1 on a seeded conv")
        factory = {"device": device, "dtype": dtype}
        if rank > 0:
            self.lora_A = nn.Parameter(torch.empty((rank, in_channels // groups, *self.kernel_size), **factory))
            self.lora_B = nn.Parameter(torch.empty((out_channels, rank // groups, *(1,) * dims), **factory))
        else:
            self.register_parameter("lora_A", None)
            self.register_parameter("lora_B", None)
        self.beta = nn.Parameter(torch.ones(1, **factory), requires_grad=train_beta)
        if use_dora:
            self.lora_magnitude = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("lora_magnitude", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    in_features = property(lambda self: self._spec.in_features,
                           doc="The backbone matrix's columns: in_channels // groups * prod(kernel_size).")
    out_features = property(lambda self: self._spec.out_features, doc="The backbone matrix's rows: out_channels.")
    seed = property(lambda self: self._spec.seed)
    stream = property(lambda self: self._spec.stream)
    init = property(lambda self: self._spec.init)
    stream_version = property(lambda self: self._spec.version, doc="The backbone stream's version (1 or 2).")
    spec = property(lambda self: self._spec, doc="The layer's BackboneSpec: the (out_channels, in_channels // "
                                                 "groups * prod(kernel_size)) matrix of its W_seed.")
    shard = None  # never tensor-parallel

    @property
    def train_beta(self) -> bool:
        """Whether beta is trained (its requires_grad)."""
        return self.beta.requires_grad

    @property
    def use_dora(self) -> bool:
        """Whether the default adapter is DoRA (``lora_magnitude`` is its magnitude vector)."""
        return self.lora_magnitude is not None

    @property
    def scaling(self) -> float:
        """The factor on the low-rank product: alpha / rank (or / sqrt(rank) with rsLoRA)."""
        return lora_scaling(self.rank, self.alpha, self.use_rslora)

    def reseed(self, seed: int) -> None:
        """Re-draw W_seed in place from ``seed``; everything else stays (as ``Linear.reseed``)."""
        self._spec = dataclasses.replace(self._spec, seed=seed)

    def reset_parameters(self) -> None:
        """lora_A and lora_B as ``init_lora_weights`` says (on their matrix views, so lora_A's
        fan-in is in_channels // groups * prod(kernel_size) as for PEFT's conv), beta = 1, bias
        as nn.Conv's, and with DoRA the magnitude as the row norms of the adapted weight
        (``dora_row_norms``)."""
        if self.lora_A is not None:
            init_lora_(self.lora_A.data.view(self.rank, -1), self.lora_B.data.view(self.out_channels, -1),
                       self.init_lora_weights)
        with torch.no_grad():
            self.beta.fill_(1.0)
            if self.lora_magnitude is not None:
                self.lora_magnitude.copy_(self.dora_row_norms())
        if self.bias is not None and self.bias.device.type != "meta":
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def padding_pairs(self) -> tuple[int, ...]:
        """F.pad's amounts (last dimension first, (left, right) each) for the layer's padding."""
        if self.padding == "valid":
            return (0, 0) * self.dims
        if self.padding == "same":
            pads = []
            for k, d in zip(reversed(self.kernel_size), reversed(self.dilation)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]  # nn.Conv puts the odd one on the right
            return tuple(pads)
        return tuple(p for p in reversed(self.padding) for _ in range(2))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """x padded as nn.Conv pads it (every padding mode)."""
        pads = self.padding_pairs()
        if not any(pads):
            return x
        if self.padding_mode == "zeros":
            return F.pad(x, pads)
        return F.pad(x, pads, mode=self.padding_mode)

    def forward(self, x: torch.Tensor, adapter_names: list[str] | None = None) -> torch.Tensor:
        """x: (N, in_channels, *spatial) or (in_channels, *spatial) -> (N, out_channels,
        *spatial_out), the active adapter's term added."""
        if adapter_names is not None:
            raise NotImplementedError("adapter_names (a mixed batch) is not supported on seeded convolutions yet")
        unbatched = x.dim() == self.dims + 1
        if x.dim() != self.dims + 2 and not unbatched:
            raise ValueError(f"lottalora.Conv{self.dims}d expects input of {self.dims + 1} or {self.dims + 2} "
                             f"dimensions, got shape {tuple(x.shape)}")
        if x.shape[-self.dims - 1] != self.in_channels:
            raise ValueError(f"input has {x.shape[-self.dims - 1]} channels (shape {tuple(x.shape)}), this layer "
                             f"expects in_channels={self.in_channels}")
        check_conv_dtypes(x, {"lora_A": self.lora_A, "lora_B": self.lora_B, "bias": self.bias})
        if unbatched:
            x = x.unsqueeze(0)
        padded = self.pad(x)
        parts = self.active_adapter_parts()
        if parts is not None and self.use_dora and self.active_adapter == DEFAULT_ADAPTER:
            y = self.dora_forward(x, padded, parts)
            return y.squeeze(0) if unbatched else y
        y = seeded_conv(padded, self._spec, self.geometry, self.beta)
        if parts is not None:
            dropped = self.adapter_input(x, parts)
            y = y + self.low_rank(padded if dropped is None else self.pad(dropped), parts).to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(-1, *(1,) * self.dims)
        y = y.to(output_dtype(x))
        return y.squeeze(0) if unbatched else y

    def dora_row_norms(self) -> torch.Tensor:
        """n = ||beta W_seed + scaling lora_B2d @ lora_A2d|| per output channel, detached:
        (out_channels,) in the accumulation dtype of beta's (``lottalora.ops.dora.weight_row_norms``
        on the spec and ``lora_factors_2d``; |beta| ||W_seed[o]|| at rank 0)."""
        factors = self.lora_factors_2d()
        lora_A, lora_B = factors if factors is not None else (None, None)
        return weight_row_norms(self._spec, lora_A, lora_B, self.beta, self.scaling)

    def dora_forward(self, x: torch.Tensor, padded: torch.Tensor, parts: AdapterParts) -> torch.Tensor:
        """PEFT's conv DoRA on x (N, in_channels, *spatial) and its padded form: (m / n) per output
        channel (dimension 1) on the adapted conv, plus bias; with the adapter's dropout in
        training, PEFT's dropped form. Returns x's dtype (inside autocast, autocast's)."""
        scale = magnitude_scale(self.lora_magnitude, self.dora_row_norms())
        dropped = self.adapter_input(x, parts)
        if dropped is None:
            adapted = seeded_conv(padded, self._spec, self.geometry, self.beta)
            adapted = adapted + self.low_rank(padded, parts).to(adapted.dtype)
            return combine(adapted, scale, self.bias, channel_dim=1).to(output_dtype(x))
        base = seeded_conv(padded, self._spec, self.geometry, self.beta)
        if self.bias is not None:
            base = base + self.bias.to(base.dtype).view(-1, *(1,) * self.dims)
        padded_dropped = self.pad(dropped)
        backbone_dropped = seeded_conv(padded_dropped, self._spec, self.geometry, self.beta)
        low_rank = self.low_rank(padded_dropped, parts)
        return combine_dropped(base, backbone_dropped, low_rank, scale, channel_dim=1).to(output_dtype(x))

    def low_rank(self, x: torch.Tensor, parts: AdapterParts) -> torch.Tensor:
        """scaling * conv_1x1(conv(x, lora_A), lora_B) on the padded input x, in x's accumulation dtype."""
        compute = accumulation_dtype(x.dtype)
        conv = (F.conv1d, F.conv2d)[self.dims - 1]
        xa = conv(x.to(compute), parts.lora_A.to(compute), None, self.stride, 0, self.dilation, self.groups)
        return parts.scaling * conv(xa, parts.lora_B.to(compute), None, 1, 0, 1, self.groups)

    def new_adapter(self, **options) -> LoraAdapter:
        raise NotImplementedError("named adapters (add_adapter) are not supported on seeded convolutions yet")

    def lora_factors_2d(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The default adapter as matrices over the backbone's: (lora_A2d (rank, in_features),
        lora_B2d (out_features, rank)), so that the low-rank term's weight, as W_seed's matrix,
        is ``scaling * lora_B2d @ lora_A2d``. For groups > 1 lora_B2d is block-diagonal (group g's
        output channels use group g's rank channels). Differentiable; None at rank 0."""
        if self.lora_A is None:
            return None
        a2d = self.lora_A.reshape(self.rank, -1)
        b = self.lora_B.reshape(self.out_channels, -1)
        if self.groups == 1:
            return a2d, b
        out_g = self.out_channels // self.groups
        return a2d, torch.block_diag(*b.split(out_g, dim=0))

    def delta_weight(self) -> torch.Tensor | None:
        """scaling * lora_B2d @ lora_A2d as the conv weight (out_channels, in_channels // groups,
        *kernel_size), in the accumulation dtype of the layer's parameters; None at rank 0."""
        factors = self.lora_factors_2d()
        if factors is None:
            return None
        compute = accumulation_dtype(self.lora_A.dtype)
        a2d, b2d = (f.to(compute) for f in factors)
        return (self.scaling * (b2d @ a2d)).view(self.geometry.weight_shape(self.out_channels))

    @property
    def dense_weight_shape(self) -> tuple[int, ...]:
        """(out_channels, in_channels // groups, *kernel_size): nn.Conv's weight shape."""
        return tuple(self.geometry.weight_shape(self.out_channels))

    def backbone_weight(self, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """The dense W_seed as the conv weight (out_channels, in_channels // groups,
        *kernel_size), regenerated now and never cached; float32 unless ``dtype``."""
        w = dense_block(self._spec, device=device if device is not None else self.beta.device)
        w = w.view(self.dense_weight_shape)
        return w.to(dtype) if dtype is not None else w

    def check_state_dict(self, state_dict, prefix: str = "") -> None:
        """ValueError naming this layer unless the entries under ``prefix`` that are present fit
        it (shapes, floating-point tensors, extra state). Loads nothing."""
        try:
            key = prefix + "_extra_state"
            if key in state_dict:
                self._check_fits(decode_extra_state(state_dict[key]))
            for name, param in self._parameters.items():
                value = state_dict.get(prefix + name)
                if param is None or value is None:
                    continue
                if name == "beta" and isinstance(value, torch.Tensor) and value.dim() == 0:
                    value = value.reshape(1)
                if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.shape != param.shape:
                    got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) \
                        else type(value).__name__
                    raise ValueError(f"{name} must be a floating-point tensor of shape {tuple(param.shape)} "
                                     f"(rank {self.rank}), got {got}")
        except ValueError as exc:
            where = f"lottalora.Conv{self.dims}d {prefix[:-1]!r}" if prefix else f"lottalora.Conv{self.dims}d"
            raise ValueError(f"{where}: {exc}") from None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
                + (f", padding={self.padding!r}" if self.padding != (0,) * self.dims else "")
                + (f", dilation={self.dilation}" if self.dilation != (1,) * self.dims else "")
                + (f", groups={self.groups}" if self.groups != 1 else "")
                + (", bias=False" if self.bias is None else "")
                + (f", padding_mode={self.padding_mode!r}" if self.padding_mode != "zeros" else "")
                + f", rank={self.rank}, alpha={self.alpha:g}, rslora={self.use_rslora}, init={self.init!r}, "
                f"stream_version={self.stream_version}, seed={self.seed}, stream={self.stream}"
                + ("" if self.train_beta else ", train_beta=False")
                + (f", lora_dropout={self.lora_dropout:g}" if self.lora_dropout else "")
                + (", use_dora=True" if self.use_dora else ""))


class Conv1d(SeededConv):
    """A seeded ``nn.Conv1d``: input (N, in_channels, L) -> (N, out_channels, L_out). See ``SeededConv``."""

    dims = 1


class Conv2d(SeededConv):
    """A seeded ``nn.Conv2d``: input (N, in_channels, H, W) -> (N, out_channels, H_out, W_out). See ``SeededConv``."""

    dims = 2
