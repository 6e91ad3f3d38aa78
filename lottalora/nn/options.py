"""A seeded layer's options, checked where every layer and ``convert`` take them: rank, alpha,
lora_dropout, the flags, and the LoRA scaling they give."""

from __future__ import annotations

import math

import torch

# The kernels take the LoRA scaling as a float32: an alpha above this would turn into inf.
ALPHA_MAX = torch.finfo(torch.float32).max


def check_flag(value: object, what: str) -> bool:
    """``value`` or TypeError naming ``what``: a bool (a string such as "no" is truthy, and would
    turn the option on)."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, got {value!r}")
    return value


def check_dropout(lora_dropout: object) -> float:
    """``lora_dropout`` as a float, or ValueError: a probability in [0, 1)."""
    if isinstance(lora_dropout, bool) or not isinstance(lora_dropout, (int, float)) or not 0 <= lora_dropout < 1:
        raise ValueError(f"lora_dropout must be a probability in [0, 1), got {lora_dropout!r}")
    return float(lora_dropout)


def lora_scaling(rank: int, alpha: float, use_rslora: bool) -> float:
    """The factor on the low-rank product: alpha / rank, or alpha / sqrt(rank); 0 at rank 0."""
    if rank == 0:
        return 0.0
    return alpha / (math.sqrt(rank) if use_rslora else rank)


def check_rank(rank: object, what: str = "rank") -> int:
    """``rank`` or ValueError naming ``what``: an int (not a bool) >= 0."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"{what} must be an int >= 0, got {rank!r}")
    return rank


def check_alpha(alpha: object, zero_ok: bool = False, what: str = "alpha") -> float:
    """``alpha`` as a float, or ValueError: a number (not a bool), finite, in (0, ALPHA_MAX].
    ``zero_ok`` admits 0 too: a saved rank-0 layer's alpha (alpha=None resolves to the rank)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or alpha < 0 or (alpha == 0 and not zero_ok) or alpha > ALPHA_MAX:
        raise ValueError(f"{what} must be a positive finite number of at most {ALPHA_MAX:.4g} (float32's "
                         f"largest, the kernels' precision for the scaling), got {alpha!r}")
    return float(alpha)
