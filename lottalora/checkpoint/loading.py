"""``lottalora.load``: a checkpoint restored into a model, all or nothing.

Everything is validated before the model changes: a missing, oversized, truncated or tampered
file, a config that breaks the schema or whose checksum does not match, an unknown format or
stream version, a layer or tensor (name, shape, dtype) that does not match the model, or a
generator whose fingerprint differs each raise ValueError, and nothing is loaded partially.
Nothing is unpickled: the config is JSON and the tensors are safetensors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..backbone import backbone_fingerprint
from ..distributed.state import shard_like
from ..model.modules import retie, tied_groups
from ..nn import Linear, SeededConv, is_dtensor, plain_name, seeded_layers, unwrap_model
from ..nn.adapters import DEFAULT_ADAPTER, adapter_extra_state, check_adapter_name
from ..nn.state import extra_state, upgrade_legacy_beta
from .files import parse_tensors, read_checkpoint, tensor_contents
from .format import ADAPTER_ONLY, TENSORS_NAME, fail, shorten
from .model_state import conv_weight_shape, state_key, state_tensors


def _upgrade_betas(tensors: dict[str, torch.Tensor], layers: dict[str, Linear]) -> None:
    """Checkpoints written by lottalora 0.1 hold each beta 0-dim; layers hold it as (1,) now."""
    for name in layers:
        upgrade_legacy_beta(tensors, f"{name}.beta" if name else "beta")


def _check_weight_shape(directory: Path, layer: dict, module) -> None:
    # The backbone matrix alone does not tell a (3, 1) kernel from a (1, 3) one, or a conv from
    # a Linear of its matrix's shape: a rank-0 layer's other tensors would load into either.
    saved, held = layer.get("weight_shape"), conv_weight_shape(module)
    if saved != held:
        def kind(shape):
            return f"a conv of weight shape {tuple(shape)}" if shape is not None else "a Linear"
        fail(directory, f"layer {layer['name']!r} is {kind(held)} in the model but {kind(saved)} in the "
                         "checkpoint")


def check_fingerprint(directory: Path, layer: dict) -> None:
    """This build's generator reproduces the layer's recorded backbone fingerprint (a few values
    regenerated, 4 rows of at most 64 columns, never the backbone)."""
    if backbone_fingerprint(layer["spec"]) != layer["fingerprint"]:
        fail(directory, f"layer {layer['name']!r}: the backbone fingerprint differs: this build's "
                         "generator does not reproduce the weights the checkpoint was trained with")


def check_no_conv_adapters(directory: Path, layer: dict) -> None:
    """A seeded conv's entry (one with a ``weight_shape``) lists no named adapters: convs hold none."""
    if layer.get("adapters") and "weight_shape" in layer:
        fail(directory, f"layer {layer['name']!r} is a seeded convolution, which holds no named adapters, and "
                         f"the checkpoint lists {sorted(layer['adapters'])} on it")


def check_tensor_kind(directory: Path, config: dict, data: bytes) -> str:
    """What the tensor file holds (``tensor_contents``), which the config must agree with: an
    adapter checkpoint's config names its adapter, and only its config does."""
    contents = tensor_contents(directory, data)
    if (contents == ADAPTER_ONLY) != ("adapter" in config):
        fail(directory, f"the config and {TENSORS_NAME} disagree on whether it holds one adapter")
    return contents


def _check_backbone(directory: Path, layer: dict, module: Linear) -> None:
    _check_weight_shape(directory, layer, module)
    s = layer["spec"]
    if (module.in_features, module.out_features, module.bias is not None) != \
            (s.in_features, s.out_features, layer["bias"]):
        fail(directory, f"layer {layer['name']!r} is {module.out_features}x{module.in_features} bias "
                         f"{module.bias is not None} in the model but {s.out_features}x{s.in_features} bias "
                         f"{layer['bias']} in the checkpoint")
    check_fingerprint(directory, layer)


def _adapters_to_add(directory: Path, config: dict, layers: dict[str, Linear]) -> list[tuple[str, str, dict]]:
    """(layer, adapter name, its entry) of the checkpoint's named adapters the model lacks, after
    checking that the ones it has are the checkpoint's (same names and ranks)."""
    missing = []
    for layer in config["layers"]:
        module, recorded = layers[layer["name"]], layer.get("adapters", {})
        extra = sorted(set(module.named_adapters) - set(recorded))
        if extra:
            fail(directory, f"layer {layer['name']!r} has adapters {extra} in the model, which the checkpoint lacks")
        check_no_conv_adapters(directory, layer)  # _check_layers_match made the entry's kind the model's
        for name, entry in recorded.items():
            held = module.named_adapters.get(name)
            if held is None:
                missing.append((layer["name"], name, entry))
            elif held.rank != entry["rank"]:
                fail(directory, f"layer {layer['name']!r}: adapter {name!r} has rank {held.rank} in the model and "
                                 f"{entry['rank']} in the checkpoint")
    return missing


def _check_layers_match(directory: Path, config: dict, layers: dict[str, Linear]) -> None:
    names = [layer["name"] for layer in config["layers"]]
    unknown = sorted(set(names) - set(layers))
    if unknown:
        fail(directory, f"layers {unknown} are not lottalora.Linear layers of this model")
    missing = sorted(set(layers) - set(names))
    if missing:
        fail(directory, f"the model's seeded layers {missing} are not in the checkpoint")
    for layer in config["layers"]:
        module, s = layers[layer["name"]], layer["spec"]
        _check_weight_shape(directory, layer, module)
        if (module.in_features, module.out_features, module.rank, module.bias is not None) != \
                (s.in_features, s.out_features, layer["rank"], layer["bias"]):
            fail(directory, f"layer {layer['name']!r} is {module.out_features}x{module.in_features} rank "
                             f"{module.rank} bias {module.bias is not None} in the model but "
                             f"{s.out_features}x{s.in_features} rank {layer['rank']} bias {layer['bias']} in the "
                             "checkpoint")
        check_fingerprint(directory, layer)
        _check_dora_matches(directory, layer, module)


def _check_dora_matches(directory: Path, layer: dict, module: Linear) -> None:
    """The checkpoint's layer and the model's are both DoRA or both not (a DoRA layer's
    lora_magnitude has nowhere to go in a plain one, and a plain checkpoint has none to give)."""
    saved = layer.get("use_dora", False)
    if saved != module.use_dora:
        fail(directory, f"layer {layer['name']!r} is {'' if module.use_dora else 'not '}DoRA in the model "
                         f"(use_dora={module.use_dora}) but {'' if saved else 'not '}DoRA in the checkpoint: "
                         f"build the model with use_dora={saved} to load it")


def resolve_aliases(directory: Path, tensors: dict[str, torch.Tensor], aliases: dict[str, str]) -> None:
    """Add each alias (a tied name, stored once) to ``tensors`` as the tensor it names, after
    checking that it names a stored tensor and shadows none."""
    for alias, stored in aliases.items():
        if alias in tensors:
            fail(directory, f"alias {shorten(alias)} shadows a tensor stored under that name in {TENSORS_NAME}")
        if stored not in tensors:
            fail(directory, f"alias {shorten(alias)} names {shorten(stored)}, which is not stored in {TENSORS_NAME}")
    for alias, stored in aliases.items():
        tensors[alias] = tensors[stored]


def check_tensors_match(directory: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                        every: bool = True, against: str = "the model"):
    """The checkpoint's ``tensors`` have ``expected``'s names, shapes and kinds of dtype (meta
    tensors will do); ``every``: it must hold every one of them (else a subset of them).
    ``against`` says in messages where ``expected`` comes from: "the model", or "the config"
    (shapes a layer's entry implies, whose dtypes stand only for "floating")."""
    missing = sorted(set(expected) - set(tensors)) if every else []
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        fail(directory, f"tensors differ from {against}'s: missing {missing[:5]}, "
                         f"unexpected {shorten(unexpected[:5])}")
    for key, value in tensors.items():
        want = expected[key]
        if value.shape != want.shape:
            fail(directory, f"tensor {shorten(key)} has shape {tuple(value.shape)}, {against} has {tuple(want.shape)}")
        # Floating values are converted to the model's floating dtype (as load_state_dict
        # does); anything else (an integer weight, a float into an integer buffer) is refused.
        if want.is_floating_point():
            same_kind = value.is_floating_point()
        else:
            same_kind = value.dtype == want.dtype
        if not same_kind:
            held = f", the model's is {want.dtype}" if against == "the model" else ""
            fail(directory, f"tensor {shorten(key)} has dtype {value.dtype}{held}: "
                             + ("a floating-point tensor is expected" if want.is_floating_point()
                                else "the same dtype is expected"))


def _check_ties_agree(directory: Path, tensors: dict[str, torch.Tensor], ties: list[list[str]]) -> None:
    """Names that are one tensor in the model (tied) get one value: a checkpoint of a model where
    they were two tensors, with two values, would otherwise load the last one into both."""
    for names in ties:
        held = [n for n in map(plain_name, names) if n in tensors]
        for name in held[1:]:
            if not torch.equal(tensors[name], tensors[held[0]]):
                fail(directory, f"tensors {shorten(held[0])} and {shorten(name)} are one tensor in the model (tied) "
                                 "but differ in the checkpoint: it was saved from a model where they were not tied")


def _layer_names(model: nn.Module, layers: dict) -> dict[str, list[str]]:
    """{a seeded layer's recorded name: every name it has in the model} (one layer may sit at
    several places; each has its own state_dict entries, "_extra_state" among them)."""
    recorded = {id(m): name for name, m in layers.items()}
    names = {name: [] for name in layers}
    for place, m in seeded_layers(model, plain=True, every_place=True).items():
        names[recorded[id(m)]].append(place)
    return names


def _check_nothing_left_on_meta(directory: Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Non-persistent buffers (rotary frequencies, masks) are not in a state_dict: a meta-built
    model would keep them on meta, and its forward would fail far from here."""
    left = [name for name, t in [*model.named_parameters(remove_duplicate=False),
                                 *model.named_buffers(remove_duplicate=False)]
            if t.device.type == "meta" and plain_name(name) not in tensors]
    if left:
        fail(directory, f"the model has tensors on the meta device that no checkpoint holds ({left[:3]}): "
                         "call lottalora.materialize(model, device) before lottalora.load")


def load(model: nn.Module, directory: str | os.PathLike, *, adapter: str | None = None) -> nn.Module:
    """Restore a checkpoint written by ``save`` into ``model`` (same architecture, converted).

    Reads format versions ``READABLE_FORMAT_VERSIONS``. Everything is checked first (see the
    module docstring); then seeds, streams, inits, alpha and use_rslora are set from the config
    and every tensor is loaded, converted to the dtype of the model's tensor (floating-point
    values only, into floating-point tensors). Parameters on the meta device are replaced by
    CPU tensors; a model with other tensors left on meta (non-persistent buffers) is refused:
    ``lottalora.materialize`` it first. A checkpoint saved with ``trainable_only=True`` loads
    its tensors and leaves the model's others as they are. ``model`` may be compiled,
    DDP-wrapped, or sharded with FSDP2 or tensor parallel (every rank reads the files and keeps
    its own shards; no collective). Named adapters the checkpoint holds and the model lacks are
    added (with their rank, alpha, rsLoRA and dropout); ones the model has must be there too.

    A checkpoint of one adapter (``save(model, directory, adapter=...)``) loads into adapter
    ``adapter`` (default: the name it was saved under; "default": the layers' own lora_A and
    lora_B) of each layer it lists, whose backbone must be the one the adapter was trained on
    (seed, stream, init, stream version and shape); a layer without that adapter gets it, with the
    file's rank, alpha, rsLoRA and dropout. The model's other tensors are left as they are.
    Returns ``model``.
    """
    directory = Path(directory)
    config, data = read_checkpoint(directory)
    return load_checked(model, directory, config, data, adapter=adapter)


def load_checked(model: nn.Module, directory: Path, config: dict, data: bytes, adapter: str | None = None,
                 prepare: Callable[[], None] | None = None) -> nn.Module:
    """``load`` with the checkpoint already read by ``read_checkpoint`` (config and tensor bytes,
    validated): callers that also need the config read the files once. ``prepare`` (a whole-model
    checkpoint only) is called once the stored tensors' names, shapes and dtype kinds are checked
    against the model's and before anything is loaded: from_pretrained materializes its
    meta-built model there, so that shapes the tensors do not have (a config.json's vocab_size)
    are refused before they are allocated."""
    model = unwrap_model(model)
    layers = seeded_layers(model, plain=True)
    contents = check_tensor_kind(directory, config, data)
    if "adapter" in config:
        return _load_adapter(model, directory, config, data, layers, config["adapter"] if adapter is None else adapter)
    if adapter is not None:
        fail(directory, f"holds a whole model, not one adapter: adapter={adapter!r} is for checkpoints written "
                         "with lottalora.save(model, directory, adapter=...)")
    _check_layers_match(directory, config, layers)
    to_add = _adapters_to_add(directory, config, layers)
    tensors = parse_tensors(directory, data)
    every = contents == "all"
    del data
    resolve_aliases(directory, tensors, config["aliases"])
    _upgrade_betas(tensors, layers)
    expected = state_tensors(model)
    for layer_name, name, entry in to_add:  # what the adapters the load adds will hold
        module, prefix = layers[layer_name], state_key(layer_name, f"lora_adapters.{name}.")
        expected[prefix + "lora_A"] = torch.empty(entry["rank"], module.in_features, device="meta",
                                                  dtype=module.beta.dtype)
        expected[prefix + "lora_B"] = torch.empty(module.out_features, entry["rank"], device="meta",
                                                  dtype=module.beta.dtype)
    check_tensors_match(directory, tensors, expected, every)
    if prepare is not None:
        prepare()
    ties = tied_groups(model)
    _check_ties_agree(directory, tensors, ties)
    _check_nothing_left_on_meta(directory, model, tensors)

    on_meta = any(t.device.type == "meta" for t in list(model.parameters()) + list(model.buffers()))
    for layer_name, name, entry in to_add:
        layers[layer_name].add_adapter(name, rank=entry["rank"], alpha=entry["alpha"], use_rslora=entry["use_rslora"],
                                       lora_dropout=entry["lora_dropout"])
    if to_add or prepare is not None:  # the tensors they now hold
        expected = state_tensors(model)
    for key, value in tensors.items():
        want = expected[key]
        if is_dtensor(want):  # every rank keeps its own shard of the whole tensor read
            tensors[key] = shard_like(value, want)
        elif on_meta:
            # assign=True adopts the given tensors as they are: give them the model's dtype (and
            # device, CPU for what is on meta) first. The copying load converts on its own.
            tensors[key] = value.to(device="cpu" if want.device.type == "meta" else want.device, dtype=want.dtype)
    places = _layer_names(model, layers)
    for layer in config["layers"]:
        for place in places[layer["name"]]:
            tensors[state_key(place, "_extra_state")] = extra_state(
                layer["spec"], layer["rank"], float(layer["alpha"]), layer["use_rslora"])
            for name, entry in layer.get("adapters", {}).items():
                tensors[state_key(place, f"lora_adapters.{name}._extra_state")] = adapter_extra_state(
                    entry["rank"], float(entry["alpha"]), entry["use_rslora"])
        for name, entry in layer.get("adapters", {}).items():
            layers[layer["name"]].named_adapters[name].lora_dropout = float(entry["lora_dropout"])
    model_names = {plain_name(k): k for k in model.state_dict()}
    unfilled = sorted(set(model_names) - set(tensors)) if every else []
    if unfilled:  # checked here, as load_state_dict would only say so after loading the rest
        fail(directory, f"holds nothing for the model's state_dict entries {shorten(unfilled[:5])}")
    tensors = {model_names[k]: v for k, v in tensors.items()}
    if on_meta:
        model.load_state_dict(tensors, strict=every, assign=True)
        retie(model, ties)  # assign=True gives each name its own tensor
        if config["aliases"] and hasattr(model, "tie_weights"):
            model.tie_weights()
    else:
        model.load_state_dict(tensors, strict=every)
    return model


def _load_adapter(model: nn.Module, directory: Path, config: dict, data: bytes, layers: dict[str, Linear],
                  target: str) -> nn.Module:
    """An adapter checkpoint loaded into adapter ``target`` of the layers it lists (``load``)."""
    try:
        check_adapter_name(target)
    except ValueError as exc:
        fail(directory, str(exc))
    plan = []  # (layer entry, module, whether the adapter is added)
    for layer in config["layers"]:
        module = layers.get(layer["name"])
        if module is None:
            fail(directory, f"adapter layer {layer['name']!r} is not a lottalora.Linear layer of this model")
        _check_backbone(directory, layer, module)
        if module.spec != layer["spec"]:
            fail(directory, f"layer {layer['name']!r}: the adapter was trained on backbone {layer['spec']}, the "
                             f"model's is {module.spec}")
        held = module.rank if target == DEFAULT_ADAPTER else \
            module.named_adapters[target].rank if target in module.named_adapters else None
        if held is not None and held != layer["rank"]:
            fail(directory, f"layer {layer['name']!r}: adapter {target!r} has rank {held} in the model and "
                             f"{layer['rank']} in the checkpoint")
        if target == DEFAULT_ADAPTER and held == 0:
            fail(directory, f"layer {layer['name']!r} has no default adapter (rank 0) to load into")
        if target != DEFAULT_ADAPTER and isinstance(module, SeededConv):
            fail(directory, f"layer {layer['name']!r} is a seeded convolution, which holds no named adapters: "
                             "load the checkpoint as the default adapter (adapter='default')")
        if target == DEFAULT_ADAPTER:
            _check_dora_matches(directory, layer, module)
        elif layer.get("use_dora", False):
            fail(directory, f"layer {layer['name']!r}: the adapter is DoRA, and named adapters are plain LoRA: "
                             "load it as the default adapter (adapter='default') of a use_dora=True model")
        plan.append((layer, module, held is None))
    tensors = parse_tensors(directory, data)
    del data
    want = {}
    for layer, module, _ in plan:
        name = layer["name"]
        if isinstance(module, SeededConv):  # a conv's default adapter holds conv weights
            want[state_key(name, "lora_A")] = tuple(module.lora_A.shape)
            want[state_key(name, "lora_B")] = tuple(module.lora_B.shape)
        else:
            want[state_key(name, "lora_A")] = (layer["rank"], module.in_features)
            want[state_key(name, "lora_B")] = (module.out_features, layer["rank"])
        if layer.get("use_dora", False):
            want[state_key(name, "lora_magnitude")] = (module.out_features,)
    if set(tensors) != set(want):
        fail(directory, f"tensors differ from the adapter's: missing {sorted(set(want) - set(tensors))[:5]}, "
                         f"unexpected {shorten(sorted(set(tensors) - set(want))[:5])}")
    for key, shape in want.items():
        value = tensors[key]
        if not value.is_floating_point() or tuple(value.shape) != shape:
            fail(directory, f"tensor {shorten(key)} is {value.dtype} {tuple(value.shape)}, a floating-point tensor "
                             f"of shape {shape} is expected")
    if any(p.device.type == "meta" for _, module, _ in plan for p in module.parameters()):
        fail(directory, "the model's seeded layers are on the meta device: lottalora.materialize(model, device) "
                         "before loading an adapter into it")
    for layer, module, add in plan:
        if add:
            module.add_adapter(target, rank=layer["rank"], alpha=layer["alpha"], use_rslora=layer["use_rslora"],
                               lora_dropout=layer["lora_dropout"])
        parts = module.adapter_parts(target)
        with torch.no_grad():
            pairs = [(parts.lora_A, "lora_A"), (parts.lora_B, "lora_B")]
            if layer.get("use_dora", False):
                pairs.append((module.lora_magnitude, "lora_magnitude"))
            for param, key in pairs:
                value = tensors[state_key(layer["name"], key)].to(param.dtype)
                param.copy_(shard_like(value, param) if is_dtensor(param) else value.to(param.device))
        owner = module if target == DEFAULT_ADAPTER else module.named_adapters[target]
        owner.alpha, owner.use_rslora = float(layer["alpha"]), layer["use_rslora"]
        owner.lora_dropout = float(layer["lora_dropout"])
    return model
