"""Find betas that only ever act as a product with another layer's beta.

In a gated MLP converted without adapters (LLaMA's ``down_proj(act(gate_proj(x)) * up_proj(x))``)
up_proj's output reaches down_proj only through an elementwise product, so

    down(h) = beta_down * W_down (g * (beta_up * W_up x)) + bias_down
            = (beta_down * beta_up) * W_down (g * W_up x) + bias_down.

The two betas are one degree of freedom: started at the same 1.0, each one's gradient is the
other times the same sum, so they stay equal (to about 1e-7 in float32 training) and the pair
trains beta**2, which cannot change sign, with one parameter wasted. ``convert`` therefore
freezes the upstream one at 1.0; the function the model can express is unchanged.

The rule, checked on the module's traced graph (torch.fx) rather than on layer names: a seeded
layer U without adapter, bias or frozen beta whose output has one user at each step, through
elementwise products with values that do not depend on U, divisions of it by such values and
dropout, into the input of a seeded layer D without adapter whose beta trains, each of U and D
called once in the graph and placed once in the model (D also applied to another input, or U's
output also used elsewhere, would leave terms that only one of the betas scales). U's bias would
add a term beta_up does not scale, and an adapter on either layer adds trained terms that the
betas do not scale together, so those pairs are left alone. A module that torch.fx cannot
trace (control flow on inputs, unpacking arguments) is left alone too: nothing is frozen
that the graph does not prove redundant. transformers' attention modules are such modules, so
v_proj and o_proj both without adapters keep two betas although attention is linear in V.
"""

from __future__ import annotations

import operator
import warnings
from collections import Counter

import torch
from torch import fx, nn

from ..nn import Linear

_PRODUCTS = {operator.mul, operator.imul, torch.mul}
_QUOTIENTS = {operator.truediv, operator.itruediv, torch.div, torch.true_divide}
_DROPOUTS = {nn.functional.dropout, torch.dropout}


class _SeededLeafTracer(fx.Tracer):
    """Keeps seeded layers as single call_module nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, Linear) or super().is_leaf_module(m, module_qualified_name)


def _depends_on(node: fx.Node, source: fx.Node) -> bool:
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current is source:
            return True
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return False


def _scales_linearly(user: fx.Node, node: fx.Node, source: fx.Node, root: nn.Module) -> bool:
    """Whether ``user`` is c * node (or node / c, or dropout(node)) with c independent of source."""
    args = list(user.args) + list(user.kwargs.values())
    if user.op == "call_module":
        return isinstance(root.get_submodule(user.target), nn.Dropout) and user.args[:1] == (node,)
    is_call = user.op in ("call_function", "call_method")
    name = user.target if user.op == "call_method" else None
    if is_call and (user.target in _DROPOUTS or name == "dropout"):
        return user.args[:1] == (node,)
    if is_call and (user.target in _PRODUCTS or name in ("mul", "mul_")) and len(args) == 2:
        other = args[1] if args[0] is node else args[0] if args[1] is node else None
    elif is_call and (user.target in _QUOTIENTS or name in ("div", "div_")) and len(args) == 2:
        other = args[1] if args[0] is node else None
    else:
        return False
    if other is None or other is node:
        return False
    return not (isinstance(other, fx.Node) and _depends_on(other, source))


def _absorbing_layer(source: fx.Node, root: nn.Module) -> str | None:
    """The seeded layer whose input is ``source``'s output scaled linearly, else None."""
    node = source
    while len(node.users) == 1:
        (user,) = node.users
        if user.op == "call_module" and isinstance(root.get_submodule(user.target), Linear):
            return user.target if user.args == (node,) and not user.kwargs else None
        if not _scales_linearly(user, node, source, root):
            return None
        node = user
    return None


def _is_upstream_candidate(m: nn.Module) -> bool:
    return isinstance(m, Linear) and m.rank == 0 and m.bias is None and m.beta.requires_grad


def find_redundant_betas(model: nn.Module) -> dict[str, str]:
    """{name of a layer whose beta is redundant: name of the layer its output feeds, whose beta
    absorbs it}, by the rule in this module's docstring. Only modules with a candidate layer as a
    direct child are traced; nothing is changed."""
    found: dict[str, str] = {}
    places = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    for parent_name, parent in model.named_modules():
        if not any(_is_upstream_candidate(child) for child in parent.children()):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = _SeededLeafTracer().trace(parent)
        except Exception:  # noqa: BLE001 - any failure to trace means "not proven", never an error
            continue
        prefix = f"{parent_name}." if parent_name else ""
        calls = Counter(node.target for node in graph.nodes if node.op == "call_module")

        def once(target: str) -> bool:
            return calls[target] == 1 and places[id(parent.get_submodule(target))] == 1

        for node in graph.nodes:
            if node.op != "call_module" or not _is_upstream_candidate(parent.get_submodule(node.target)):
                continue
            target = _absorbing_layer(node, parent)
            if target is None or not (once(node.target) and once(target)):
                continue
            absorber = parent.get_submodule(target)
            name, absorber_name = prefix + node.target, prefix + target
            # A chain U1 -> U2 -> D freezes U1 and U2: the product still has D's beta, which is
            # never frozen here because the graph has no cycle.
            if absorber.rank == 0 and absorber.beta.requires_grad:
                found[name] = absorber_name
    return found
