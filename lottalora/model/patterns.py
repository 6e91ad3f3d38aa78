"""PEFT's name rules: which of a model's modules a conversion option names.

``target_modules``, ``exclude_modules``, ``adapter_modules`` and ``trainable_modules`` take a
regex matched against the whole qualified name, or a list of names or name suffixes matched at
a ``.`` boundary; ``rank_pattern`` and ``alpha_pattern`` map regexes that match the end of a
name to per-layer values; ``"all-linear"`` is every linear layer but the output head;
``layers_to_transform`` / ``layers_pattern`` keep the targets whose layer index (the number
after the pattern's module list, ``model.layers.3.``) is listed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

Patterns = str | Sequence[str] | None
ALL_LINEAR = "all-linear"
# transformers classifiers' heads, PEFT's SEQ_CLS_HEAD_NAMES (PEFT leaves out the module, lottalora all of it).
CLASSIFIER_HEADS = ("score", "classifier")


def check_patterns(argument: str, patterns: Patterns) -> None:
    """TypeError/ValueError naming ``argument`` unless ``patterns`` is None, a valid regex or a
    list of strings."""
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


def pattern_value(name: str, pattern: dict | None, default):
    """PEFT's rank_pattern / alpha_pattern rule: the first key that matches the end of the
    qualified name at a ``.`` boundary (a regex) gives the value, else ``default``."""
    for key, value in (pattern or {}).items():
        if re.fullmatch(rf"(?:.*\.)?(?:{key})", name):
            return value
    return default


def check_pattern_dict(argument: str, pattern, check_value) -> None:
    """TypeError/ValueError naming ``argument`` unless ``pattern`` is None or a dict of valid
    regexes to values ``check_value(key, value)`` accepts."""
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


def json_patterns(patterns: Patterns):
    """``patterns`` as a JSON value (lists for sequences), for the conversion's record."""
    return patterns if patterns is None or isinstance(patterns, str) else list(patterns)


def classifier_heads(model: nn.Module) -> list[nn.Module]:
    """A transformers classifier's heads: its top-level ``score`` or ``classifier`` modules,
    where it has no output embeddings (a language model's head is those)."""
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    if (callable(get_output_embeddings) and get_output_embeddings() is not None) or not hasattr(model, "config"):
        return []
    return [head for name in CLASSIFIER_HEADS if isinstance(head := getattr(model, name, None), nn.Module)]


def output_head_names(model: nn.Module) -> set[str]:
    """Qualified names of the output head(s) "all-linear" leaves alone, by PEFT's rule: the
    module ``model.get_output_embeddings()`` returns (transformers language models: lm_head),
    else ``classifier_heads`` (transformers classifiers), with every module inside one
    (RoBERTa's ``classifier`` is a dense layer and ``out_proj``: the head is all of them, and a
    seeded ``out_proj`` would put a random projection before the labels). A plain nn.Module has
    no head that can be told apart: list ``exclude_modules`` for it."""
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    heads = [get_output_embeddings()] if callable(get_output_embeddings) else []
    heads += classifier_heads(model)
    ids = {id(h) for h in heads if isinstance(h, nn.Module)}
    names = {name for name, m in model.named_modules() if id(m) in ids}
    return {name for name, _ in model.named_modules() if any(name == h or name.startswith(f"{h}.") for h in names)}


def check_layer_selection(target_modules: Patterns, all_linear: bool, layers_to_transform, layers_pattern) -> None:
    """PEFT's rules for ``layers_to_transform`` (an int >= 0 or a list of them) and
    ``layers_pattern`` (a module-list name or a list of them, only with layers_to_transform);
    neither goes with a regex ``target_modules`` (PEFT refuses that too)."""
    if layers_to_transform is not None:
        values = [layers_to_transform] if not isinstance(layers_to_transform, (list, tuple)) else layers_to_transform
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"layers_to_transform must be an int >= 0 or a list of them, got {layers_to_transform!r}")
    if layers_pattern is not None:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
            raise TypeError(f"layers_pattern must be None, a string or a list of strings, got {layers_pattern!r}")
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"layers_pattern {p!r} is not a valid regular expression: {exc}") from None
        if patterns and layers_to_transform is None:
            raise ValueError("layers_pattern only selects layers together with layers_to_transform: give both")
    if isinstance(target_modules, str) and not all_linear and (layers_to_transform is not None or layers_pattern):
        raise ValueError("layers_to_transform and layers_pattern need target_modules as a list of names (or "
                         "'all-linear'): a regex target_modules names the layers itself (PEFT's rule)")


def layer_index(name: str, layers_pattern) -> int | None:
    """PEFT's layer index of the qualified ``name``: the first number after a module named by
    ``layers_pattern`` (``model.layers.3.self_attn.q_proj`` -> 3 with "layers"), or, without a
    pattern, the first number segment after at least two names; None when there is none."""
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern or [])
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        match = None
        for pattern in patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match is not None:
                break
    return int(match.group("idx")) if match is not None else None


def in_selected_layers(name: str, layers_to_transform, layers_pattern) -> bool:
    """Whether ``name`` is in the layers ``layers_to_transform`` selects (always, when None)."""
    if layers_to_transform is None or layers_to_transform == []:
        return True
    index = layer_index(name, layers_pattern)
    if index is None:
        return False
    if isinstance(layers_to_transform, int):
        return index == layers_to_transform
    return index in layers_to_transform
