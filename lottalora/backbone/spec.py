"""A layer's backbone identity: ``BackboneSpec``, everything that determines its ``W_seed``."""

from __future__ import annotations

from dataclasses import dataclass

from lottalora_kernels.stream import spec


def _check_u64(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in [0, 2**64 - 1], got {type(value).__name__} {value!r}")
    if not 0 <= value <= spec.UINT64_MAX:
        raise ValueError(f"{name} must be in [0, 2**64 - 1] (a 64-bit unsigned integer), got {value}")
    return value


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that determines a layer's frozen weight ``W_seed`` (out_features x in_features).

    seed: 64-bit unsigned user seed (the Philox key). stream: 64-bit unsigned id that tells the
    layers of one model apart. init: "gaussian", "uniform" or "rademacher". version: the stream
    version (docs/backbone.md). ``version=None`` picks the newest version that provides
    ``init``; ``init=None`` picks the version's default (version 2: "rademacher", exact +-1
    signs times 1/sqrt(in_features); version 1: "gaussian").
    """

    seed: int
    stream: int
    in_features: int
    out_features: int
    init: str | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        _check_u64("seed", self.seed)
        _check_u64("stream", self.stream)
        _check_positive_int("in_features", self.in_features)
        _check_positive_int("out_features", self.out_features)
        version, init = spec.resolve_version_and_init(self.version, self.init)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "init", init)
        max_out, max_in = (2**32, 2**34) if version == 1 else (spec.V2_MAX_OUT_FEATURES, spec.V2_MAX_IN_FEATURES)
        if self.out_features > max_out or self.in_features > max_in:
            raise ValueError(
                f"stream version {version} counts rows and columns in 32-bit counter words: "
                f"out_features must be <= {max_out} and in_features <= {max_in}, "
                f"got ({self.out_features}, {self.in_features})"
            )

    @property
    def value_scale(self) -> float:
        """The float32 factor of the stream's values (see ``lottalora_kernels.stream.spec.value_scale``)."""
        return spec.value_scale(self.in_features, self.init, self.version)

    @property
    def std(self) -> float:
        """float32(1/sqrt(in_features)): version 2's weights are +-std."""
        return spec.backbone_std(self.in_features)
