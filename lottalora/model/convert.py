"""Turn an existing model into a seeded one: its linear layers become ``lottalora.Linear``.

Each converted layer's stream is derived from its qualified module name
(``lottalora.stream_for_name``), so two converted copies of one architecture get the same
backbones whatever the construction order, process or machine. The name is the plain one that
checkpoints record (``lottalora.nn.plain_name`` inside ``unwrap_model``): a model converted inside
its torch.compile or DDP wrapper, or holding submodules compiled in place, gets the layers, the
streams and the name-option selection of the bare model. Everything is frozen afterwards
except the adapters, beta, biases of converted layers, and the modules named in
``trainable_modules``; a beta that only acts as a product with another layer's beta
(``redundant_betas``) is frozen at 1.0.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from lottalora_kernels.stream.spec import resolve_version_and_init

from ..backbone import BackboneSpec, stream_for_name
from ..nn import SEEDED_LAYER_TYPES, Linear, plain_name, seeded_layers, unwrap_model
from ..nn.adapters import check_init_lora_weights
from ..nn.options import check_alpha, check_dropout, check_flag, check_rank
from .conv_layers import conv_matrix_shape, is_dense_conv, seeded_conv_like
from .load_check import check_loads_whole
from .modules import (
    check_not_peft,
    linear_shape,
    module_places,
    moe_experts,
    parameter_names,
    set_submodule,
    tied_elsewhere,
)
from .patterns import (
    ALL_LINEAR,
    Patterns,
    check_layer_selection,
    check_pattern_dict,
    check_patterns,
    classifier_heads,
    in_selected_layers,
    json_patterns,
    name_matches,
    output_head_names,
    pattern_value,
)
from .pretrained_class import adopt_seeded_class
from .records import record_call
from .redundant_betas import find_redundant_betas
from .summary import summarize_model

BIAS_MODES = ("none", "all", "lora_only")


@dataclass(frozen=True)
class _Options:
    """convert's arguments, checked."""

    rank: int
    alpha: float | None
    use_rslora: bool
    seed: int
    init: str
    version: int
    all_linear: bool
    target_modules: Patterns
    exclude_modules: Patterns
    adapter_modules: Patterns
    trainable_modules: Patterns
    train_beta: bool
    lora_dropout: float
    bias: str
    rank_pattern: dict | None
    alpha_pattern: dict | None
    layers_to_transform: int | list[int] | None
    layers_pattern: str | list[str] | None
    init_lora_weights: bool | str
    use_dora: bool = False

    def record(self) -> dict:
        """The call's arguments as JSON values (seeds as decimal strings), for ``records``."""
        return dict(
            rank=self.rank, alpha=self.alpha, use_rslora=self.use_rslora, seed=str(self.seed), init=self.init,
            stream_version=self.version,
            target_modules=ALL_LINEAR if self.all_linear else json_patterns(self.target_modules),
            exclude_modules=json_patterns(self.exclude_modules), adapter_modules=json_patterns(self.adapter_modules),
            trainable_modules=json_patterns(self.trainable_modules), train_beta=self.train_beta,
            lora_dropout=self.lora_dropout, bias=self.bias, rank_pattern=self.rank_pattern,
            alpha_pattern=self.alpha_pattern, layers_to_transform=(
                list(self.layers_to_transform) if isinstance(self.layers_to_transform, (list, tuple))
                else self.layers_to_transform),
            layers_pattern=json_patterns(self.layers_pattern), init_lora_weights=self.init_lora_weights,
            **({"use_dora": True} if self.use_dora else {}))


def convert(
    model: nn.Module, *, rank: int = 8, alpha: float | None = None, use_rslora: bool = False,
    seed: int = 0, init: str | None = None, stream_version: int | None = None, target_modules: Patterns = None,
    exclude_modules: Patterns = None, adapter_modules: Patterns = None, trainable_modules: Patterns = None,
    train_beta: bool = True, lora_dropout: float = 0.0, bias: str = "lora_only",
    rank_pattern: dict[str, int] | None = None, alpha_pattern: dict[str, float] | None = None,
    layers_to_transform: int | list[int] | None = None, layers_pattern: str | list[str] | None = None,
    init_lora_weights: bool | str = True, use_dora: bool = False,
) -> nn.Module:
    """Replace linear layers (and named convolutions) of ``model`` in place with seeded layers and freeze the rest.

    target_modules: which linear layers (nn.Linear, transformers' Conv1D) and convolutions
    (nn.Conv1d, nn.Conv2d: ``lottalora.Conv1d`` / ``Conv2d``, their geometry kept) to convert.
    Convolutions convert only when target_modules names them: ``None`` or ``"all-linear"``
    (PEFT's shorthand, which in PEFT too matches linear layers only) is every linear layer but the output head
    (``output_head_names``: a transformers model's lm_head or classifier; a plain nn.Module has
    none that can be told apart). A layer whose weight is tied to another module's (GPT-2's
    lm_head and token embedding) is never converted by "all-linear", and naming it is an error:
    its dense weight is shared and cannot be replaced by a seed. A module placed at two names
    (``self.b = self.a``) is one layer, not a tie: it converts when one of its names is selected
    and none is excluded, into one seeded layer at each of them. exclude_modules: layers never
    converted (PEFT's option). adapter_modules: which converted layers get a rank-``rank``
    adapter; the others become rank-0 seeded layers (all get one when None). rank_pattern and
    alpha_pattern (PEFT's): {regex matching the end of a name: rank or alpha} overriding
    ``rank`` / ``alpha`` per layer (rank 0: no adapter). trainable_modules: modules whose
    parameters stay trainable (embeddings, norms, a head); its regex, or each entry of its list,
    must match a module. The name options accept a regex
    matched against the whole qualified name, or a list of names / name suffixes (PEFT's rule).
    layers_to_transform (PEFT's): an int or a list of layer indices; only targets in those
    layers convert, a layer's index being the number after ``layers_pattern`` in its name
    (``"layers"``: ``model.layers.3.mlp.up_proj`` is in layer 3; a list of patterns takes the
    first that matches) or, without a pattern, the first number that follows two names. A
    target with no such number is left out. Both need target_modules as a list (or
    "all-linear"), as in PEFT. init_lora_weights (PEFT's): True (Kaiming-uniform A, zero B),
    "gaussian", "orthogonal" or False (``lottalora.Linear``); PiSSA, OLoRA, LoftQ and the
    others that need a pretrained weight are refused with the reason. use_dora (PEFT's): every
    converted layer with an adapter is DoRA (``lottalora.Linear(use_dora=True)``, and the convs
    ``Conv1d`` / ``Conv2d(use_dora=True)``: a trained ``lora_magnitude`` per output row or
    channel); rank-0 layers stay as they are. MoE experts held as 3-D parameters (transformers'
    Mixtral and Qwen2-MoE ``...Experts``: ``moe_experts``) are not converted: a warning gives
    their share of the model, they stay dense, and naming them in target_modules is an error.

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
    down_proj when neither has an adapter; rule and proof in ``lottalora.model.redundant_betas``)
    is frozen at 1.0 too, leaving one trained scale per product instead of two equal ones. Make
    it train again with ``layer.beta.requires_grad_(True)`` to reproduce one beta per layer.

    A transformers model (``PreTrainedModel``) gets its class changed in place to the same class
    with lottalora's ``save_pretrained`` (``lottalora.model.pretrained_class``), so that
    ``model.save_pretrained``, ``push_to_hub`` and the Trainer write a lottalora directory, which
    ``AutoModel*.from_pretrained`` rebuilds. Convert the model you save: a model that holds
    converted layers without being converted itself (a submodule converted alone) keeps
    transformers' save_pretrained, which writes a checkpoint the Trainer resumes from but that
    from_pretrained refuses (``lottalora.nn.dense_guard``, with a warning when it is written);
    ``lottalora.save`` writes such a model whole.
    """
    options = _check_options(model, rank, alpha, use_rslora, seed, init, stream_version, target_modules,
                             exclude_modules, adapter_modules, trainable_modules, train_beta, lora_dropout, bias,
                             rank_pattern, alpha_pattern, layers_to_transform, layers_pattern, init_lora_weights)
    options = dataclasses.replace(options, use_dora=check_flag(use_dora, "use_dora"))
    # Everything below works on the model inside torch.compile / DDP wrappers: the options name
    # the bare model's modules, the streams come from its names, and the record and the class
    # must be where the wrapper's save_pretrained (the inner model's) finds them.
    root = unwrap_model(model)
    experts = moe_experts(root)
    targets = _targets(root, options, experts)
    # The model's size as it came in (backbones as the dense weights they replace), for the
    # experts' share: counted only where there are experts, ordinary models pay nothing.
    dense_size = summarize_model(root)["total_params"] if experts else 0
    first_conversion = not seeded_layers(root)
    # Every seeded layer is built (its arguments checked) before the first one is placed: a layer
    # that refuses its arguments (a conv's rank against its groups) leaves the model as it was.
    converted = {places[0]: _seeded_layer([plain_name(p) for p in places], module, shape, options)
                 for places, module, shape in targets}
    for places, _, _ in targets:  # a module placed twice stays one layer, at each of its places
        for place in places:
            set_submodule(root, place, converted[places[0]])
    _set_trainable(root, converted, options, first_conversion)
    if first_conversion:
        _warn_frozen_classifier(root)
    if experts:
        _warn_dense_experts(root, experts, dense_size)
    record_call(root, [plain_name(places[0]) for places, _, _ in targets], options.record())
    # On the inner model, its pre-hook also runs when the wrapper loads (load_state_dict visits every submodule).
    check_loads_whole(root)
    adopt_seeded_class(root)
    return model


def _check_options(model, rank, alpha, use_rslora, seed, init, stream_version, target_modules, exclude_modules,
                   adapter_modules, trainable_modules, train_beta, lora_dropout, bias, rank_pattern,
                   alpha_pattern, layers_to_transform, layers_pattern, init_lora_weights) -> _Options:
    """Every argument checked before the model changes (TypeError/ValueError naming it)."""
    all_linear = target_modules is None or (isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR)
    for argument, patterns in (("target_modules", None if all_linear else target_modules),
                               ("exclude_modules", exclude_modules), ("adapter_modules", adapter_modules),
                               ("trainable_modules", trainable_modules)):
        check_patterns(argument, patterns)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    # A PEFT model's adapters are nn.Linear modules too: converting it would make PEFT's lora_A
    # and lora_B random seeded layers, and its forward reads their weights.
    check_not_peft(model, "convert the base model instead (a seeded layer carries its own LoRA adapter; PEFT's "
                          "get_base_model() or merge_and_unload() gives the base model back)")
    check_rank(rank)
    if alpha is not None:
        check_alpha(alpha)
    version, init = resolve_version_and_init(stream_version, init)
    check_flag(train_beta, "train_beta")
    check_flag(use_rslora, "use_rslora")
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    check_dropout(lora_dropout)
    check_pattern_dict("rank_pattern", rank_pattern, lambda key, v: check_rank(v, f"rank_pattern[{key!r}]"))
    check_pattern_dict("alpha_pattern", alpha_pattern, lambda key, v: check_alpha(v, what=f"alpha_pattern[{key!r}]"))
    check_layer_selection(target_modules, all_linear, layers_to_transform, layers_pattern)
    init_lora_weights = check_init_lora_weights(init_lora_weights)
    return _Options(rank, alpha, use_rslora, seed, init, version, all_linear, target_modules, exclude_modules,
                    adapter_modules, trainable_modules, train_beta, lora_dropout, bias, rank_pattern, alpha_pattern,
                    layers_to_transform, layers_pattern, init_lora_weights)


def _targets(model: nn.Module, options: _Options,
             experts: dict[str, list[str]]) -> list[tuple[list[str], nn.Module, tuple[int, int]]]:
    """(places, dense module, (in_features, out_features)) of every layer of the unwrapped
    ``model`` to convert: ``places`` every name the module sits at (``self.b = self.a``: both),
    which the options match in their plain form (without the ``_orig_mod`` segments of
    submodules compiled in place), the first's the stream's: a module placed twice converts when
    one of its places is selected and none is excluded, into one seeded layer at all of them.
    ``experts`` is ``moe_experts`` of the model. ValueError when the options name nothing, a tied
    weight, an MoE experts module, or layers that cannot be both."""
    heads = output_head_names(model) if options.all_linear else set()
    names = parameter_names(model)
    places_of = module_places(model)
    targets = []
    for name, module in model.named_modules():
        shape = linear_shape(module)
        if shape is None and not options.all_linear and is_dense_conv(module):  # convs only when named
            shape = conv_matrix_shape(module)
        if shape is None or not name:
            continue
        places = places_of[id(module)]
        plains = [plain_name(place) for place in places]
        if any(place in heads for place in places):
            continue
        if options.exclude_modules is not None and any(name_matches(p, options.exclude_modules) for p in plains):
            continue
        if not options.all_linear and not any(name_matches(p, options.target_modules) for p in plains):
            continue
        if not any(in_selected_layers(p, options.layers_to_transform, options.layers_pattern) for p in plains):
            continue
        plain = plains[0]
        tied = [plain_name(n) for n in tied_elsewhere(names, places, module)]
        if tied and options.all_linear:
            continue
        if tied:
            raise ValueError(f"{plain}.weight is tied to {tied[0]}: a tied weight is shared with another module "
                             f"and cannot become a seed; leave {plain!r} out of target_modules")
        targets.append((places, module, shape))
    if not options.all_linear:
        _refuse_named_experts(model, experts, options, bool(targets))
    if not targets:
        selection = "" if options.layers_to_transform is None else \
            f" in layers_to_transform={options.layers_to_transform!r} (layers_pattern={options.layers_pattern!r})"
        left = sorted(plain_name(n) for n in heads if linear_shape(model.get_submodule(n)) is not None)
        head = f"; all-linear leaves the output head's layers {left} dense: name them in target_modules to " \
               "seed them" if left else ""
        raise ValueError(f"target_modules={options.target_modules!r} matched no nn.Linear (or Conv1D, or "
                         f"nn.Conv1d / nn.Conv2d named in it) in the model{selection}{head}")
    target_names = [plain_name(p) for places, _, _ in targets for p in places]  # every name matches
    if options.trainable_modules is not None:
        clash = [n for n in target_names if name_matches(n, options.trainable_modules)]
        if clash:
            raise ValueError(f"{clash} are both conversion targets and trainable_modules: exclude them from "
                             "target_modules to keep them as trained dense layers")
    if options.trainable_modules is not None:
        _check_trainable_matches(model, options.trainable_modules)
    if options.adapter_modules is not None and not any(name_matches(n, options.adapter_modules) for n in target_names):
        raise ValueError(f"adapter_modules={options.adapter_modules!r} matched none of the converted layers")
    for argument, pattern in (("rank_pattern", options.rank_pattern), ("alpha_pattern", options.alpha_pattern)):
        for key in pattern or {}:
            if not any(pattern_value(n, {key: 0}, None) is not None for n in target_names):
                raise ValueError(f"{argument} key {key!r} matches none of the converted layers")
    return targets


def _refuse_named_experts(model: nn.Module, experts: dict[str, list[str]], options: _Options,
                          found_targets: bool) -> None:
    """ValueError when target_modules names an MoE experts module: a list entry always does, a
    regex only when it matched no layer (a broad regex such as ``.*mlp.*`` reaches the experts by
    the way; the warning of ``_warn_dense_experts`` tells about those)."""
    named = [n for n in experts if name_matches(plain_name(n), options.target_modules)
             and not (options.exclude_modules is not None and name_matches(plain_name(n), options.exclude_modules))]
    if not named or (isinstance(options.target_modules, str) and found_targets):
        return
    more = f" and {len(named) - 1} more" if len(named) > 1 else ""
    module = model.get_submodule(named[0])
    raise ValueError(f"target_modules={json_patterns(options.target_modules)!r} names {plain_name(named[0])!r}{more}, "
                     f"an MoE experts module ({type(module).__name__}) holding its experts as 3-D parameters "
                     f"({', '.join(experts[named[0]])}), which lottalora does not convert: it seeds nn.Linear, "
                     "Conv1D and named convolutions only. Leave it out of target_modules (it stays dense and frozen), "
                     "or name it in trainable_modules to train it dense")


def _warn_frozen_classifier(model: nn.Module) -> None:
    """A warning when a transformers classifier's head is left frozen: fine-tuning starts it
    from a fresh initialisation, and frozen it stays random (PEFT trains it under
    task_type="SEQ_CLS"; convert has no task type, so only trainable_modules says so)."""
    for head in classifier_heads(model):
        params = list(head.parameters())
        seeded = any(isinstance(m, SEEDED_LAYER_TYPES) for m in head.modules())  # named in target_modules
        if params and not seeded and not any(p.requires_grad for p in params):
            name = next(n for n, m in model.named_modules() if m is head)
            head_name = plain_name(name)
            warnings.warn(f"convert left the classifier head {head_name!r} dense and frozen: a classifier's head is "
                          "usually new (randomly initialised) when a model is fine-tuned for a task, and frozen it "
                          f"stays as it is. trainable_modules=[{head_name!r}] trains it (as PEFT's "
                          "task_type='SEQ_CLS' does)",
                          UserWarning, stacklevel=3)


def _warn_dense_experts(model: nn.Module, experts: dict[str, list[str]], dense_size: int) -> None:
    """One warning per call naming the MoE experts modules of the unwrapped ``model`` left dense
    and frozen, and their share of its ``dense_size`` before the call; none when
    trainable_modules trains them all. They are most of an MoE model, and nothing else would
    say that the conversion missed them."""
    frozen, left = {}, []
    for name, params in experts.items():
        module = model.get_submodule(name)
        tensors = [getattr(module, p) for p in params if not getattr(module, p).requires_grad]
        if tensors:
            left.append((plain_name(name), params))
            frozen.update((id(t), t.numel()) for t in tensors)
    if not left:
        return
    shown = ", ".join(name for name, _ in left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
    warnings.warn(
        f"convert left {len(left)} MoE experts module(s) dense and frozen ({shown}: experts held as 3-D parameters "
        f"{', '.join(left[0][1])}, not nn.Linear layers), {sum(frozen.values()) / dense_size:.1%} of the model's "
        "parameters. lottalora does not support seeded experts: they are stored dense, and frozen unless "
        f"trainable_modules names them (trainable_modules=[{left[0][0].rpartition('.')[2]!r}] trains them dense)",
        UserWarning, stacklevel=3)


def _check_trainable_matches(model: nn.Module, patterns: Patterns) -> None:
    """ValueError naming the trainable_modules regex, or the entries of its list, that match no
    module of the unwrapped ``model``: a misspelt name would leave its module frozen unseen."""
    names = [plain_name(name) for name, _ in model.named_modules(remove_duplicate=False) if name]
    if isinstance(patterns, str):
        if not any(name_matches(n, patterns) for n in names):
            raise ValueError(f"trainable_modules={patterns!r} matched no module of the model (a regex must "
                             "match a module's whole qualified name)")
        return
    unmatched = [p for p in patterns if not any(name_matches(n, [p]) for n in names)]
    if unmatched:
        raise ValueError(f"trainable_modules={list(patterns)!r}: {unmatched!r} matched no module of the model "
                         "(each entry is a module's name or name suffix)")


def _seeded_layer(plains: list[str], module: nn.Module, shape: tuple[int, int], options: _Options) -> nn.Module:
    """The seeded layer for the dense ``module`` whose plain names are ``plains`` (the first its
    stream's; the options match any of them), not yet placed in the model."""
    name = plains[0]
    in_features, out_features = shape
    weight = module.weight
    has_adapter = options.adapter_modules is None or any(name_matches(p, options.adapter_modules) for p in plains)
    layer_rank = _pattern_value(plains, options.rank_pattern, options.rank) if has_adapter else 0
    layer_alpha = _pattern_value(plains, options.alpha_pattern, options.alpha)
    if is_dense_conv(module):
        new = seeded_conv_like(module, BackboneSpec(options.seed, stream_for_name(name), in_features, out_features,
                                                    options.init, options.version),
                               rank=layer_rank, alpha=layer_alpha,
                               use_rslora=options.use_rslora, train_beta=options.train_beta,
                               lora_dropout=options.lora_dropout, init_lora_weights=options.init_lora_weights,
                               use_dora=options.use_dora and layer_rank > 0)
        return _keep_bias(module, new, options)
    new = Linear(in_features, out_features, bias=module.bias is not None, rank=layer_rank,
                 alpha=layer_alpha, use_rslora=options.use_rslora,
                 seed=options.seed, stream=stream_for_name(name), init=options.init, stream_version=options.version,
                 train_beta=options.train_beta, lora_dropout=options.lora_dropout,
                 init_lora_weights=options.init_lora_weights, use_dora=options.use_dora and layer_rank > 0,
                 device=weight.device, dtype=weight.dtype)
    new.merges_into_conv1d = not isinstance(module, nn.Linear)
    return _keep_bias(module, new, options)


def _pattern_value(plains: list[str], pattern: dict | None, default):
    """``pattern_value`` of the first of a layer's names that a key of ``pattern`` matches."""
    for plain in plains:
        value = pattern_value(plain, pattern, None)
        if value is not None:
            return value
    return default


def _keep_bias(module: nn.Module, new: nn.Module, options: _Options) -> nn.Module:
    """Copy the dense module's bias into the seeded ``new``; returns ``new``."""
    if module.bias is not None and module.bias.device.type != "meta":
        with torch.no_grad():
            new.bias.copy_(module.bias)
    if new.bias is not None:
        new.bias.requires_grad_(options.bias != "none")
    return new


def _set_trainable(model: nn.Module, converted: dict[str, Linear], options: _Options, first_conversion: bool) -> None:
    """What trains after the call (the rules in ``convert``'s docstring); ``model`` is unwrapped
    and ``converted`` keyed by its names."""
    if first_conversion:
        for param in model.parameters():
            param.requires_grad_(False)
        for layer in converted.values():
            for param_name, param in layer.named_parameters():
                param.requires_grad_(param_name != "beta" or options.train_beta)
                if param_name == "bias":
                    param.requires_grad_(options.bias != "none")
    if options.trainable_modules is not None:
        # Seeded layers inside a trainable module keep what train_beta and bias decided.
        seeded = {id(p) for layer in seeded_layers(model).values() for p in layer.parameters()}
        for name, module in model.named_modules(remove_duplicate=False):  # a module at two names: either
            if name and name_matches(plain_name(name), options.trainable_modules):
                for param in module.parameters():
                    if id(param) not in seeded:
                        param.requires_grad_(True)
    if options.bias == "all":
        for param_name, param in model.named_parameters():
            if param_name.rpartition(".")[2] == "bias":
                param.requires_grad_(True)
    if options.train_beta:
        for name in find_redundant_betas(model):
            if name in converted:
                converted[name].beta.requires_grad_(False)
