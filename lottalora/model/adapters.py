"""Several adapters over one model's seeded backbones, as PEFT holds them: add, switch, delete,
run without any, and a batch whose rows pick their own.

    lottalora.add_adapter(model, "french", rank=16)   # on the layers the default adapter is on
    lottalora.set_adapter(model, "french")            # the forward adds it; only it trains
    with lottalora.disable_adapter(model): ...        # beta * W_seed x + bias
    with lottalora.mixed_batch(model, ["default", "french", "__base__"]): model(ids)

The adapters live on the seeded layers (``lottalora.nn.adapters``): the default one is each
layer's own lora_A / lora_B (the state_dict keys of every checkpoint), named ones are under
``<layer>.lora_adapters.<name>``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from ..nn import Linear, SeededConv, seeded_layers
from ..nn.adapters import BASE_ROW, DEFAULT_ADAPTER, check_adapter_name, check_init_lora_weights
from ..nn.options import check_alpha, check_dropout, check_rank
from .patterns import (
    ALL_LINEAR,
    Patterns,
    check_layer_selection,
    check_pattern_dict,
    check_patterns,
    in_selected_layers,
    name_matches,
    pattern_value,
)

# convert's options that concern the backbones or the rest of the model, not an adapter.
_BACKBONE_OPTIONS = ("seed", "init", "stream_version", "train_beta", "bias", "trainable_modules", "adapter_modules")


def _layers(model: nn.Module) -> dict[str, Linear]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    # Plain names: the selection options name the bare model's layers, as convert's do.
    layers = seeded_layers(model, plain=True)
    if not layers:
        raise ValueError("model has no lottalora.Linear layer: convert it first (lottalora.convert)")
    return layers


def list_adapters(model: nn.Module) -> list[str]:
    """Every adapter some seeded layer of ``model`` holds, "default" first, then in the order added."""
    names: dict[str, None] = {}
    for layer in _layers(model).values():
        names.update(dict.fromkeys(layer.adapter_names()))
    return sorted(names, key=lambda n: n != DEFAULT_ADAPTER)


def _check_known(model: nn.Module, name: str) -> None:
    known = list_adapters(model)
    if name not in known:
        raise ValueError(f"model has no adapter {name!r} (it has {known})")


def add_adapter(
    model: nn.Module, name: str, *, rank: int = 8, alpha: float | None = None, use_rslora: bool = False,
    lora_dropout: float = 0.0, init_lora_weights: bool | str = True, target_modules: Patterns = None,
    exclude_modules: Patterns = None, layers_to_transform: int | list[int] | None = None,
    layers_pattern: str | list[str] | None = None, rank_pattern: dict[str, int] | None = None,
    alpha_pattern: dict[str, float] | None = None, **backbone_options,
) -> nn.Module:
    """Add adapter ``name`` to seeded layers of ``model`` (already converted), over the same
    backbones: each layer then holds it beside its default adapter. Returns ``model``.

    The options are ``convert``'s adapter options, with convert's meaning: rank, alpha,
    use_rslora, lora_dropout, init_lora_weights, rank_pattern and alpha_pattern (rank 0 there:
    the layer gets no such adapter), and target_modules / exclude_modules / layers_to_transform /
    layers_pattern, matched against the seeded layers' names. ``target_modules=None``: the
    seeded layers whose default adapter has rank >= 1 (the same placement); ``"all-linear"``:
    every seeded layer. convert's backbone options (seed, init, stream_version, train_beta,
    bias, trainable_modules, adapter_modules) are refused by name: the backbones are shared.

    The new adapter starts frozen and inactive (PEFT's add_adapter): ``set_adapter(model, name)``
    makes it the one the forward adds and the one that trains. Everything is checked before a
    layer changes. Named adapters are plain LoRA: ``use_dora=True`` is refused.
    """
    if backbone_options.pop("use_dora", False) is not False:
        raise ValueError(f"add_adapter(model, {name!r}, use_dora=...): named DoRA adapters are not supported; only "
                         "the default adapter can be DoRA (lottalora.convert(model, ..., use_dora=True))")
    if backbone_options:
        backbone = sorted(set(backbone_options) & set(_BACKBONE_OPTIONS))
        if backbone:
            raise TypeError(f"add_adapter() got {backbone}: convert options of the backbones, which every adapter of "
                            "a layer shares; an adapter takes rank, alpha, use_rslora, lora_dropout, "
                            "init_lora_weights and the layer-selection options")
        raise TypeError(f"add_adapter() got unexpected keyword arguments {sorted(backbone_options)}")
    layers = _layers(model)
    check_adapter_name(name)
    if name == DEFAULT_ADAPTER or name in list_adapters(model):
        raise ValueError(f"model already has an adapter {name!r}")
    all_linear = isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR
    for argument, patterns in (("target_modules", None if all_linear else target_modules),
                               ("exclude_modules", exclude_modules)):
        check_patterns(argument, patterns)
    check_rank(rank)
    if alpha is not None:
        check_alpha(alpha)
    check_dropout(lora_dropout)
    init_lora_weights = check_init_lora_weights(init_lora_weights)
    check_pattern_dict("rank_pattern", rank_pattern, lambda key, v: check_rank(v, f"rank_pattern[{key!r}]"))
    check_pattern_dict("alpha_pattern", alpha_pattern, lambda key, v: check_alpha(v, what=f"alpha_pattern[{key!r}]"))
    check_layer_selection(target_modules, all_linear or target_modules is None, layers_to_transform, layers_pattern)

    chosen, selected = {}, []
    for layer_name, layer in layers.items():
        if target_modules is None:
            if layer.rank == 0:
                continue
        elif not all_linear and not name_matches(layer_name, target_modules):
            continue
        if exclude_modules is not None and name_matches(layer_name, exclude_modules):
            continue
        if not in_selected_layers(layer_name, layers_to_transform, layers_pattern):
            continue
        selected.append(layer_name)
        layer_rank = pattern_value(layer_name, rank_pattern, rank)
        if layer_rank:
            chosen[layer_name] = (layer, layer_rank, pattern_value(layer_name, alpha_pattern, alpha))
    if not chosen:
        where = "no seeded layer has a default adapter to place it beside: name target_modules" \
            if target_modules is None else f"target_modules={target_modules!r} matched no seeded layer with rank >= 1"
        raise ValueError(f"add_adapter({name!r}): {where}")
    for argument, pattern in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        for key in pattern or {}:  # as convert refuses one: a typo would leave its layers at the default
            if not any(pattern_value(n, {key: 0}, None) is not None for n in selected):
                raise ValueError(f"add_adapter({name!r}): {argument} key {key!r} matches none of the selected layers")
    convs = sorted(n for n, (layer, _, _) in chosen.items() if isinstance(layer, SeededConv))
    if convs:  # refused before any layer changes
        raise NotImplementedError(f"add_adapter({name!r}): named adapters are not supported on seeded convolutions "
                                  f"yet, and {convs[:3]} are convs: leave them out with exclude_modules")
    if init_lora_weights == "orthogonal":
        odd = sorted(n for n, (_, r, _) in chosen.items() if r % 2)
        if odd:
            raise ValueError(f"init_lora_weights='orthogonal' needs even ranks; layers {odd[:3]} would have odd ones")
    for layer, layer_rank, layer_alpha in chosen.values():
        layer.add_adapter(name, rank=layer_rank, alpha=layer_alpha, use_rslora=use_rslora, lora_dropout=lora_dropout,
                          init_lora_weights=init_lora_weights)
    return model


def set_adapter(model: nn.Module, name: str) -> nn.Module:
    """Make adapter ``name`` the one every seeded layer adds (layers without it run their
    backbone alone), and the one that trains: its lora_A and lora_B (and a DoRA layer's
    lora_magnitude, with the default adapter) require grad, every other adapter's do not (PEFT's
    set_adapter; betas, biases and other parameters are left as they are). Returns ``model``."""
    layers = _layers(model)
    _check_known(model, name)
    for layer in layers.values():
        for other in layer.adapter_names():
            for param in layer.adapter_parameters(other):
                param.requires_grad_(other == name)
        layer.set_adapter(name if name in layer.adapter_names() else None)
    return model


def delete_adapter(model: nn.Module, name: str) -> nn.Module:
    """Remove named adapter ``name`` from every seeded layer. Where it was active, the default
    adapter becomes the active one, and the one that trains, as ``set_adapter`` makes it (PEFT's
    delete_adapter sets the adapter it falls back to; left as it was, the default ran frozen).
    The default adapter cannot be deleted. Returns ``model``."""
    layers = _layers(model)
    if name == DEFAULT_ADAPTER:
        raise ValueError("the default adapter is each layer's own lora_A / lora_B and cannot be deleted")
    _check_known(model, name)
    was_active = any(layer.active_adapter == name for layer in layers.values())
    for layer in layers.values():
        if name in layer.named_adapters:
            layer.delete_adapter(name)
    if was_active:
        set_adapter(model, DEFAULT_ADAPTER)
    return model


@contextlib.contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every seeded layer computes its bare backbone, beta * x @ W_seed^T +
    bias (PEFT's disable_adapter); each layer's active adapter comes back afterwards, also when
    the block raises."""
    layers = _layers(model)
    active = {name: layer.active_adapter for name, layer in layers.items()}
    try:
        for layer in layers.values():
            layer.set_adapter(None)
        yield model
    finally:
        for name, layer in layers.items():
            layer.active_adapter = active[name]


@contextlib.contextmanager
def mixed_batch(model: nn.Module, adapter_names: list[str]) -> Iterator[nn.Module]:
    """Within the block, row i of every batch ``model`` runs adapter ``adapter_names[i]``
    ("__base__": the bare backbone), PEFT's ``adapter_names``. Each seeded layer computes the
    backbone term for the whole batch in one product and adds each adapter's low-rank term to
    its rows; a layer without one of the adapters runs those rows on its backbone. Every seeded
    layer's input must have one row per name in its first dimension (transformers models: the
    batch)."""
    layers = _layers(model)
    if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
        raise TypeError(f"adapter_names must be a list of adapter names, one per row, got {adapter_names!r}")
    names = list(adapter_names)
    known = [DEFAULT_ADAPTER, *(n for n in list_adapters(model) if n != DEFAULT_ADAPTER), BASE_ROW]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"adapter_names names {unknown}, which the model does not hold (it has {known})")
    handles = []
    try:
        for layer in layers.values():
            own = set(layer.adapter_names()) | {DEFAULT_ADAPTER}
            rows = [n if n in own else BASE_ROW for n in names]
            handles.append(layer.register_forward_pre_hook(_rows_hook(rows), with_kwargs=True))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _rows_hook(rows: list[str]):
    def hook(module, args, kwargs):
        return args, {**kwargs, "adapter_names": rows}
    return hook
