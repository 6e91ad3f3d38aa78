"""Re-drawn scaffolds: change the random backbones of a model in place, once or on a schedule.

The paper's destabilised-scaffold experiments re-draw every frozen backbone during training
(every epoch): beta then collapses toward 0 and accuracy drops, while a model trained that way
works on any new scaffold. Re-drawing only changes each layer's seed: the streams (which keep
the layers of a model apart), the init, every parameter and so the optimizer's references and
state stay as they are.

    schedule = lottalora.ScaffoldSchedule(model, every="epoch")       # a new scaffold each epoch
    for epoch in range(epochs):
        for x, y in loader:
            ...; optimizer.step(); schedule.step()
        schedule.epoch_end()

Under torch.compile a layer's seed is a constant of the compiled graph, so each new scaffold is
a recompile; past torch._dynamo.config.recompile_limit (8) the module runs eagerly, still on the
right scaffold. Cycling among at most 8 scaffolds compiles each once.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from lottalora_kernels.stream.spec import UINT64_MAX

from ..nn import seeded_layers

EVERY = ("epoch", "step")


def reseed(module: nn.Module, seed: int) -> nn.Module:
    """Re-draw in place the backbone of every seeded layer (``lottalora.Linear``, ``Conv1d``,
    ``Conv2d``) in ``module`` (or of ``module`` itself) from ``seed``, a 64-bit unsigned int. Returns ``module``.

    Each layer keeps its stream, so the layers of one model still get different backbones; its
    init, stream version, adapters, beta and bias are untouched, as is any optimizer holding
    them. The seed is validated before any layer changes. Raises ValueError when ``module``
    holds no seeded layer.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    layers = list(seeded_layers(module).values())
    if not layers:
        raise ValueError(f"module ({type(module).__name__}) has no lottalora.Linear (or Conv1d, "
                             "Conv2d) layer to re-draw")
    dataclasses.replace(layers[0].spec, seed=seed)  # raises TypeError/ValueError naming seed
    for layer in layers:
        layer.reseed(seed)
    return module


def scaffold_seed(base_seed: int, index: int) -> int:
    """The seed of scaffold ``index`` of a schedule: base_seed + index, modulo 2**64 (Philox
    keys that differ give independent streams, so neighbouring seeds are as good as any)."""
    return (base_seed + index) % (UINT64_MAX + 1)


class ScaffoldSchedule:
    """Re-draws a model's backbones every epoch or every optimizer step, each time with a new
    scaffold, or cycling among ``num_scaffolds`` of them.

    Scaffold i has seed ``scaffold_seed(base_seed, i)``; scaffold 0 is drawn at construction, so
    training starts on it. ``base_seed=None`` takes the seed the model's seeded layers already
    share (ValueError if they differ). Call ``step()`` after each optimizer step and
    ``epoch_end()`` after each epoch; the one that does not match ``every`` does nothing.
    ``num_scaffolds=None`` never repeats a scaffold; ``num_scaffolds=1`` never changes it (the
    static control). ``state_dict()``/``load_state_dict()`` carry the position for resuming.
    """

    def __init__(self, module: nn.Module, *, every: str = "epoch", num_scaffolds: int | None = None,
                 base_seed: int | None = None) -> None:
        if every not in EVERY:
            raise ValueError(f"every must be one of {EVERY}, got {every!r}")
        if num_scaffolds is not None and (isinstance(num_scaffolds, bool) or not isinstance(num_scaffolds, int)
                                          or num_scaffolds < 1):
            raise ValueError(f"num_scaffolds must be an int >= 1 or None, got {num_scaffolds!r}")
        layers = seeded_layers(module)
        if not layers:
            raise ValueError(f"module ({type(module).__name__}) has no lottalora.Linear (or Conv1d, "
                             "Conv2d) layer to re-draw")
        if base_seed is None:
            seeds = {layer.seed for layer in layers.values()}
            if len(seeds) != 1:
                raise ValueError(f"the model's seeded layers have {len(seeds)} different seeds: pass base_seed")
            base_seed = seeds.pop()
        elif isinstance(base_seed, bool) or not isinstance(base_seed, int) or not 0 <= base_seed <= UINT64_MAX:
            raise ValueError(f"base_seed must be an int in [0, 2**64 - 1] or None, got {base_seed!r}")
        self.module, self.every, self.num_scaffolds, self.base_seed = module, every, num_scaffolds, base_seed
        self.redraws = 0
        reseed(module, self.seed)

    @property
    def scaffold(self) -> int:
        """The index of the scaffold in use."""
        return self.redraws if self.num_scaffolds is None else self.redraws % self.num_scaffolds

    @property
    def seed(self) -> int:
        """The seed of the scaffold in use."""
        return scaffold_seed(self.base_seed, self.scaffold)

    def redraw(self) -> int:
        """Move to the next scaffold now, whatever ``every`` says. Returns its seed."""
        self.redraws += 1
        reseed(self.module, self.seed)
        return self.seed

    def step(self) -> None:
        """After an optimizer step: re-draws when ``every="step"``."""
        if self.every == "step":
            self.redraw()

    def epoch_end(self) -> None:
        """After an epoch: re-draws when ``every="epoch"``."""
        if self.every == "epoch":
            self.redraw()

    def state_dict(self) -> dict:
        return {"every": self.every, "num_scaffolds": self.num_scaffolds, "base_seed": self.base_seed,
                "redraws": self.redraws}

    def load_state_dict(self, state: dict) -> None:
        """Resume at a saved position (and re-draw the model to its scaffold)."""
        mine = (self.every, self.num_scaffolds, self.base_seed)
        theirs = (state.get("every"), state.get("num_scaffolds"), state.get("base_seed"))
        if mine != theirs:
            raise ValueError(f"state is for a schedule (every, num_scaffolds, base_seed) = {theirs}, "
                             f"this one is {mine}")
        self.redraws = int(state["redraws"])
        reseed(self.module, self.seed)

    def __repr__(self) -> str:
        return (f"ScaffoldSchedule(every={self.every!r}, num_scaffolds={self.num_scaffolds}, "
                f"base_seed={self.base_seed}, scaffold={self.scaffold}, redraws={self.redraws})")
