"""A model's modules as conversion sees them: which are dense linear layers, which parameters
are tied, and replacing a submodule by name."""

from __future__ import annotations

from torch import nn

from ..nn import Linear, unwrap_model


def linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of an nn.Linear or a transformers Conv1D, else None (a seeded
    layer is not a dense one)."""
    if isinstance(module, Linear):
        return None
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_transformers_conv1d(module):
        # GPT-2's Conv1D is x @ W + b with W of shape (in, out): a linear layer stored transposed.
        # The backbone replaces W outright, so only the shape matters.
        return module.weight.shape[0], module.weight.shape[1]
    return None


def is_transformers_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' Conv1D (GPT-2's linear layer), without importing it."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at the qualified ``name`` by ``new``; a module compiled in place
    (``<parent>._orig_mod``) is replaced inside its torch.compile wrapper, which then runs ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    # The wrapper's forward is bound at torch.compile time to the module it wrapped, so without
    # this it would go on running the dense layer; rebinding keeps the wrapper and its options.
    if unwrap_model(parent) is new and hasattr(parent, "_initialize"):
        parent._initialize()


def check_not_peft(model: nn.Module, advice: str) -> None:
    """ValueError naming the first of PEFT's modules in ``model``, followed by ``advice``: what
    lottalora does with a model cannot be done to one that PEFT has wrapped or injected into."""
    for name, module in model.named_modules():
        if type(module).__module__.split(".")[0] == "peft":
            raise ValueError(f"model holds PEFT's {type(module).__name__} at {name or 'its root'}: {advice}")


def parameter_names(model: nn.Module) -> dict[int, list[str]]:
    """Every name each parameter of ``model`` goes by, keyed by the parameter's id, in
    ``named_parameters`` order (a tied parameter has several names). Built once per call, so
    finding ties costs one scan of the model, not one per layer."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return names


def module_places(model: nn.Module) -> dict[int, list[str]]:
    """Every name each submodule of ``model`` sits at, keyed by the module's id, in
    ``named_modules`` order (a module placed twice, ``self.b = self.a``, has two)."""
    places: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        places.setdefault(id(module), []).append(name)
    return places


def tied_elsewhere(names: dict[int, list[str]], places: list[str], module: nn.Module) -> list[str]:
    """Names of parameters outside ``module`` (the one at each of ``places``) that are
    ``module.weight`` itself (tied weights); ``names`` is ``parameter_names`` of the whole model.
    The module's own weight under another of its places is not a tie: it is the same layer."""
    prefixes = tuple(f"{place}." for place in places)
    return [n for n in names.get(id(module.weight), []) if not n.startswith(prefixes)]


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Names of parameters that are one object, in groups of two or more."""
    return [names for names in parameter_names(model).values() if len(names) > 1]


def retie(model: nn.Module, groups: list[list[str]]) -> None:
    """Make each group of ``tied_groups`` one parameter again, the first name's (after a
    ``to_empty`` or a load with ``assign=True`` gave each name a tensor of its own)."""
    for names in groups:
        kept = model.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            (model.get_submodule(owner) if owner else model).register_parameter(attr, kept)


def moe_experts(model: nn.Module) -> dict[str, list[str]]:
    """{qualified name: its own parameters of 3 or more dimensions} of every MoE experts module of
    ``model``. transformers 5 keeps a layer's experts in one module (Mixtral's and Qwen2-MoE's
    ``...Experts``: ``gate_up_proj`` and ``down_proj`` of shape (num_experts, out, in)), not as
    nn.Linear layers, so convert cannot seed them. Told apart by such a parameter on a module whose
    class or attribute name says expert: a conv's weight and ViT's (1, patches, hidden) position
    embeddings are 3-D too."""
    found = {}
    for name, module in model.named_modules():
        if "expert" not in type(module).__name__.lower() and "expert" not in name.rpartition(".")[2].lower():
            continue
        params = [n for n, p in module.named_parameters(recurse=False) if p.dim() >= 3]
        if params:
            found[name] = params
    return found
