"""Turn an existing model into a seeded one: nn.Linear layers become lottalora.Linear.

Each converted layer's stream is derived from its qualified module name (``stream_for_name``),
so two converted copies of one architecture get the same backbones whatever the construction
order, process or machine. Everything is frozen afterwards except the adapters, beta, biases of
converted layers, and the modules named in ``trainable_modules``; a beta that only acts as a
product with another layer's beta (``redundant_betas``) is frozen at 1.0.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence

import torch
from torch import nn

from lottalora_kernels.stream_spec import resolve_version_and_init

from .linear import Linear, check_alpha, check_dropout, check_rank
from .redundant_betas import find_redundant_betas

STREAM_NAME_PREFIX = b"lottalora/stream/v1:"


def stream_for_name(qualified_name: str) -> int:
    """The 64-bit stream of the layer at ``qualified_name``: the first 8 bytes, little-endian, of
    SHA-256("lottalora/stream/v1:" + name in UTF-8). Documented in docs/backbone.md."""
    digest = hashlib.sha256(STREAM_NAME_PREFIX + qualified_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


Patterns = str | Sequence[str] | None


def _check_patterns(argument: str, patterns: Patterns) -> None:
    if patterns is None or isinstance(patterns, str):
        if isinstance(patterns, str):
            try:
                re.compile(patterns)
            except re.error as exc:
                raise ValueError(f"{argument} is not a valid regular expression: {exc}") from None
        return
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{argument} must be None, a regex string or a list of name suffixes, got {patterns!r}")


def name_matches(name: str, patterns: Patterns) -> bool:
    """PEFT's rule: a string is a regex that must match the whole qualified name; a list holds
    names or suffixes that match at a ``.`` boundary."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of an nn.Linear or a transformers Conv1D, else None."""
    if isinstance(module, Linear):
        return None
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    cls = type(module)
    if cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers"):
        # GPT-2's Conv1D is x @ W + b with W of shape (in, out): a linear layer stored transposed.
        # The backbone replaces W outright, so only the shape matters.
        return module.weight.shape[0], module.weight.shape[1]
    return None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


ALL_LINEAR = "all-linear"
BIAS_MODES = ("none", "all", "lora_only")
# transformers sequence-classification heads PEFT also leaves out of "all-linear" (SEQ_CLS_HEAD_NAMES).
_CLASSIFIER_HEADS = ("score", "classifier")
# Where each convert call is recorded on the module it converted (lottalora.pretrained reads it).
CONVERT_CALLS_ATTR = "_lottalora_convert_calls"
_CHECKS_LOADS_ATTR = "_lottalora_checks_loads_whole"
_call_order = itertools.count()


def output_head_names(model: nn.Module) -> set[str]:
    """Qualified names of the output head(s) "all-linear" leaves alone, by PEFT's rule: the
    module ``model.get_output_embeddings()`` returns (transformers language models: lm_head),
    else a top-level ``score`` or ``classifier`` linear (transformers classifiers). A plain
    nn.Module has no head that can be told apart: list ``exclude_modules`` for it."""
    heads = []
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    if callable(get_output_embeddings):
        heads.append(get_output_embeddings())
    if not any(h is not None for h in heads) and hasattr(model, "config"):
        heads += [getattr(model, name, None) for name in _CLASSIFIER_HEADS]
    ids = {id(h) for h in heads if isinstance(h, nn.Module)}
    return {name for name, m in model.named_modules() if id(m) in ids}


def _parameter_names(model: nn.Module) -> dict[int, list[str]]:
    """Every name each parameter of ``model`` goes by, keyed by the parameter's id, in
    ``named_parameters`` order (a tied parameter has several names). Built once per call, so
    finding ties costs one scan of the model, not one per layer."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return names


def _tied_elsewhere(parameter_names: dict[int, list[str]], name: str, module: nn.Module) -> list[str]:
    """Names of parameters outside ``module`` (the one at ``name``) that are ``module.weight``
    itself (tied weights); ``parameter_names`` is ``_parameter_names`` of the whole model."""
    prefix = f"{name}."
    return [n for n in parameter_names.get(id(module.weight), []) if not n.startswith(prefix)]


def _pattern_value(name: str, pattern: dict | None, default):
    """PEFT's rank_pattern / alpha_pattern rule: the first key that matches the end of the
    qualified name at a ``.`` boundary (a regex) gives the value, else ``default``."""
    for key, value in (pattern or {}).items():
        if re.fullmatch(rf"(?:.*\.)?(?:{key})", name):
            return value
    return default


def _check_pattern_dict(argument: str, pattern, check_value) -> None:
    if pattern is None:
        return
    if not isinstance(pattern, dict) or not all(isinstance(k, str) for k in pattern):
        raise TypeError(f"{argument} must be None or a dict of name patterns to values, got {pattern!r}")
    for key, value in pattern.items():
        try:
            re.compile(key)
        except re.error as exc:
            raise ValueError(f"{argument} key {key!r} is not a valid regular expression: {exc}") from None
        check_value(key, value)


def _json_patterns(patterns: Patterns):
    return patterns if patterns is None or isinstance(patterns, str) else list(patterns)


def convert(
    model: nn.Module, *, rank: int = 8, alpha: float | None = None, use_rslora: bool = False,
    seed: int = 0, init: str | None = None, stream_version: int | None = None, target_modules: Patterns = None,
    exclude_modules: Patterns = None, adapter_modules: Patterns = None, trainable_modules: Patterns = None,
    train_beta: bool = True, lora_dropout: float = 0.0, bias: str = "lora_only",
    rank_pattern: dict[str, int] | None = None, alpha_pattern: dict[str, float] | None = None,
) -> nn.Module:
    """Replace linear layers of ``model`` in place with seeded ``lottalora.Linear`` and freeze the rest.

    target_modules: which linear layers (nn.Linear, transformers' Conv1D) to convert.
    ``None`` or ``"all-linear"`` (PEFT's shorthand): every linear layer but the output head
    (``output_head_names``: a transformers model's lm_head or classifier; a plain nn.Module has
    none that can be told apart). A layer whose weight is tied to another module's (GPT-2's
    lm_head and token embedding) is never converted by "all-linear", and naming it is an error:
    its dense weight is shared and cannot be replaced by a seed. exclude_modules: layers never
    converted (PEFT's option). adapter_modules: which converted layers get a rank-``rank``
    adapter; the others become rank-0 seeded layers (all get one when None). rank_pattern and
    alpha_pattern (PEFT's): {regex matching the end of a name: rank or alpha} overriding
    ``rank`` / ``alpha`` per layer (rank 0: no adapter). trainable_modules: modules whose
    parameters stay trainable (embeddings, norms, a head). The name options accept a regex
    matched against the whole qualified name, or a list of names / name suffixes (PEFT's rule).

    init and stream_version choose the backbone as in ``lottalora.Linear`` (default: stream 2's
    binary backbone). lora_dropout: dropout on the adapter's input while training (PEFT's).
    bias (PEFT's names): "lora_only" trains the biases of the converted layers (the default:
    unlike PEFT's "none", since a seeded layer's bias is its only dense trained part and the
    paper trains it), "none" freezes them, "all" trains every bias of the model. The old dense
    weights are dropped; biases are kept. Works on models whose weights are on the meta device
    (see ``materialize``). Returns model.

    The first call freezes every parameter that is not one of the converted layers' or of
    ``trainable_modules``; a later call on a model that already holds seeded layers adds its
    layers and trainable modules and freezes nothing it did not create. The call is recorded
    on ``model``, so ``lottalora.save`` can write how the model was built.

    train_beta=False freezes every converted layer's beta at 1.0. With train_beta=True, a beta
    that can only act as a product with the beta of the layer it feeds (LLaMA's MLP up_proj into
    down_proj when neither has an adapter; rule and proof in ``lottalora.redundant_betas``) is
    frozen at 1.0 too, leaving one trained scale per product instead of two equal ones. Make it
    train again with ``layer.beta.requires_grad_(True)`` to reproduce one beta per layer exactly.
    """
    all_linear = target_modules is None or (isinstance(target_modules, str)
                                            and target_modules.lower() == ALL_LINEAR)
    for argument, patterns in (("target_modules", None if all_linear else target_modules),
                               ("exclude_modules", exclude_modules), ("adapter_modules", adapter_modules),
                               ("trainable_modules", trainable_modules)):
        _check_patterns(argument, patterns)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_rank(rank)
    if alpha is not None:
        check_alpha(alpha)  # as Linear would, but before the model changes
    version, init = resolve_version_and_init(stream_version, init)  # a bad pair fails before the model changes
    if not isinstance(train_beta, bool):
        raise TypeError(f"train_beta must be a bool, got {train_beta!r}")
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    check_dropout(lora_dropout)
    _check_pattern_dict("rank_pattern", rank_pattern, lambda key, v: check_rank(v, f"rank_pattern[{key!r}]"))
    _check_pattern_dict("alpha_pattern", alpha_pattern, lambda key, v: check_alpha(v, what=f"alpha_pattern[{key!r}]"))

    heads = output_head_names(model) if all_linear else set()
    parameter_names = _parameter_names(model)
    targets = []
    for name, module in model.named_modules():
        shape = _linear_shape(module)
        if shape is None or not name or name in heads:
            continue
        if exclude_modules is not None and name_matches(name, exclude_modules):
            continue
        if not all_linear and not name_matches(name, target_modules):
            continue
        tied = _tied_elsewhere(parameter_names, name, module)
        if tied and all_linear:
            continue
        if tied:
            raise ValueError(f"{name}.weight is tied to {tied[0]}: a tied weight is shared with another module "
                             f"and cannot become a seed; leave {name!r} out of target_modules")
        targets.append((name, module, shape))
    if not targets:
        raise ValueError(f"target_modules={target_modules!r} matched no nn.Linear (or Conv1D) in the model")
    if trainable_modules is not None:
        clash = [n for n, _, _ in targets if name_matches(n, trainable_modules)]
        if clash:
            raise ValueError(f"{clash} are both conversion targets and trainable_modules: exclude them from "
                             "target_modules to keep them as trained dense layers")
    if adapter_modules is not None and not any(name_matches(n, adapter_modules) for n, _, _ in targets):
        raise ValueError(f"adapter_modules={adapter_modules!r} matched none of the converted layers")
    for argument, pattern in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        for key in pattern or {}:
            if not any(_pattern_value(n, {key: 0}, None) is not None for n, _, _ in targets):
                raise ValueError(f"{argument} key {key!r} matches none of the converted layers")

    first_conversion = not any(isinstance(m, Linear) for m in model.modules())
    converted = {}
    for name, module, (in_features, out_features) in targets:
        weight = module.weight
        has_adapter = adapter_modules is None or name_matches(name, adapter_modules)
        layer_rank = _pattern_value(name, rank_pattern, rank) if has_adapter else 0
        new = Linear(in_features, out_features, bias=module.bias is not None, rank=layer_rank,
                     alpha=_pattern_value(name, alpha_pattern, alpha), use_rslora=use_rslora, seed=seed,
                     stream=stream_for_name(name), init=init, stream_version=version, train_beta=train_beta,
                     lora_dropout=lora_dropout, device=weight.device, dtype=weight.dtype)
        if module.bias is not None and module.bias.device.type != "meta":
            with torch.no_grad():
                new.bias.copy_(module.bias)
        if new.bias is not None:
            new.bias.requires_grad_(bias != "none")
        if not isinstance(module, nn.Linear):
            new.merges_into_conv1d = True  # merge_and_unload gives the architecture its Conv1D back
        _set_submodule(model, name, new)
        converted[name] = new

    if first_conversion:
        for param in model.parameters():
            param.requires_grad_(False)
        for layer in converted.values():
            for param_name, param in layer.named_parameters():
                param.requires_grad_(param_name != "beta" or train_beta)
                if param_name == "bias":
                    param.requires_grad_(bias != "none")
    if trainable_modules is not None:
        # Seeded layers inside a trainable module keep what train_beta and bias decided.
        seeded = {id(p) for m in model.modules() if isinstance(m, Linear) for p in m.parameters()}
        for name, module in model.named_modules():
            if name and name_matches(name, trainable_modules):
                for param in module.parameters():
                    if id(param) not in seeded:
                        param.requires_grad_(True)
    if bias == "all":
        for param_name, param in model.named_parameters():
            if param_name.rpartition(".")[2] == "bias":
                param.requires_grad_(True)
    if train_beta:
        for name in find_redundant_betas(model):
            if name in converted:
                converted[name].beta.requires_grad_(False)
    _record_call(model, converted, dict(
        rank=rank, alpha=alpha, use_rslora=use_rslora, seed=str(seed), init=init, stream_version=version,
        target_modules=ALL_LINEAR if all_linear else _json_patterns(target_modules),
        exclude_modules=_json_patterns(exclude_modules), adapter_modules=_json_patterns(adapter_modules),
        trainable_modules=_json_patterns(trainable_modules), train_beta=train_beta, lora_dropout=lora_dropout,
        bias=bias, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern))
    check_loads_whole(model)
    return model


def _check_seeded_layers_first(model: nn.Module, state_dict, prefix: str, *_) -> None:
    """load_state_dict pre-hook of a converted model: every seeded layer's entries are checked
    before any module loads. nn.Module loads module by module (each seeded layer is itself
    all-or-nothing), so a bad entry in a late layer would otherwise raise after the earlier
    layers had loaded, leaving a half-loaded model."""
    # Every name a layer goes by (a module shared under two names loads under both). Keys that a
    # wrapper below the root renames in its own pre-hook (activation-checkpoint wrappers) are not
    # in the dict yet: such layers are checked when they load, one at a time.
    for name, layer in model.named_modules(remove_duplicate=False):
        if isinstance(layer, Linear) and layer is not model:
            layer.check_state_dict(state_dict, f"{prefix}{name}.")


def check_loads_whole(model: nn.Module) -> None:
    """Register _check_seeded_layers_first on ``model`` once (a module-level function: the model
    still pickles); the hook's id is kept on the model so that ``forget_load_check`` can remove it."""
    if getattr(model, _CHECKS_LOADS_ATTR, None) is None and not isinstance(model, Linear):
        handle = model.register_load_state_dict_pre_hook(_check_seeded_layers_first)
        object.__setattr__(model, _CHECKS_LOADS_ATTR, handle.id)


def forget_load_check(model: nn.Module) -> None:
    """Remove the hook ``check_loads_whole`` registered (a merged model is plain torch again)."""
    hook_id = model.__dict__.pop(_CHECKS_LOADS_ATTR, None)
    if hook_id is not None:
        model._load_state_dict_pre_hooks.pop(hook_id, None)


def _record_call(model: nn.Module, converted: dict[str, Linear], arguments: dict) -> None:
    """Append this call to the list kept on ``model``: its arguments (JSON values, seeds as
    decimal strings) and the layers it converted, with an order shared by every model, so calls
    on a model and on its submodules replay in the order they were made."""
    calls = getattr(model, CONVERT_CALLS_ATTR, None)
    if calls is None:
        calls = []
        # A plain attribute, not a buffer: it travels with deepcopy and pickling, never in a state_dict.
        object.__setattr__(model, CONVERT_CALLS_ATTR, calls)
    calls.append({"order": next(_call_order), "arguments": arguments, "converted": sorted(converted)})


def materialize(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Allocate on ``device`` and initialise every parameter and buffer still on the meta device.

    For building big seed-only models without their dense weights: construct the model under
    ``torch.device("meta")``, ``convert`` it, then materialize what remains (adapters,
    embeddings, norms, buffers). Seeded layers are initialised as at construction; other modules
    with the model's ``_init_weights`` (transformers models) or their own ``reset_parameters``.
    Raises ValueError naming any module that neither can initialise. Tied parameters (GPT-2's
    lm_head and token embedding) stay tied: each group is one parameter again afterwards, the
    first one's by name order.
    """
    ties = _tied_groups(model)
    init_weights = getattr(model, "_init_weights", None)
    for name, module in model.named_modules():
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if not any(t.device.type == "meta" for t in tensors):
            continue
        module.to_empty(device=device, recurse=False)
        with torch.no_grad():
            if isinstance(module, Linear):
                module.reset_parameters()
            elif init_weights is not None:
                init_weights(module)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                raise ValueError(f"cannot initialise module {name or '<root>'} ({type(module).__name__}) after "
                                 "materializing it: it has no reset_parameters and the model no _init_weights")
    for names in ties:
        kept = model.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            (model.get_submodule(owner) if owner else model).register_parameter(attr, kept)
    return model


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names of parameters that are one object, in groups of two or more."""
    return [names for names in _parameter_names(model).values() if len(names) > 1]
