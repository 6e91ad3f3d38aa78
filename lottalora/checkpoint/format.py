"""The seed-only checkpoint format's names and limits (docs/checkpoint.md), and how a refusal is
raised: ``fail`` names the directory in every ValueError.

A checkpoint directory holds ``lottalora_config.json`` (format version, the generator, one entry
per seeded layer with a backbone fingerprint, the tensor file's SHA-256 and size, and from
format 2 the config's own SHA-256) and ``adapters.safetensors`` (every tensor of the model's
state_dict; seeded backbones are not tensors of it, so they are never written), plus a
``config.json`` for a transformers model (``model_config``).
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG_NAME = "lottalora_config.json"
TENSORS_NAME = "adapters.safetensors"
# Written beside them for a transformers model: its architecture and the convert calls, from
# which lottalora.from_pretrained rebuilds it (checkpoint/model_config.py).
MODEL_CONFIG_NAME = "config.json"
# The tensor file's metadata "contents" when save(trainable_only=True) wrote it, and when
# save(adapter=name) wrote one adapter.
TRAINABLE_ONLY = "trainable"
ADAPTER_ONLY = "adapter"
# Written beside them by a converted model's save_pretrained, for transformers' Trainer, which
# resumes from a safetensors index: the index (naming TENSORS_NAME and LAYER_STATES_NAME) and
# every seeded layer's "_extra_state" (and its named adapters'), so that a resumed model takes
# the checkpoint's seeds and options as lottalora.load does.
SAFE_INDEX_NAME = "model.safetensors.index.json"
LAYER_STATES_NAME = "seeded_layers.safetensors"
FORMAT_NAME = "lottalora-seed-only"
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
# A config lists a few hundred bytes per seeded layer: 16 MiB is tens of thousands of layers,
# and keeps a hostile file from being read into memory whole.
MAX_CONFIG_BYTES = 16 * 2**20
# A config nests 3 deep (config, layers, a layer); anything much deeper is refused before any
# recursive code (checksum, messages) walks it.
MAX_CONFIG_NESTING = 16

TOP_KEYS = {
    1: {"format", "format_version", "generator", "layers", "trainable", "aliases", "tensors"},
    2: {"format", "format_version", "generator", "layers", "trainable", "aliases", "tensors", "config_sha256"},
}
# Keys format 2 allows beside those (written only where they say something, so a file without
# them is exactly what earlier builds wrote and read; an earlier build refuses a file that has
# one, by its name): the name of the one adapter an adapter checkpoint holds (save(adapter=...)).
OPTIONAL_TOP_KEYS = {1: set(), 2: {"adapter"}}
GENERATOR_KEYS = {"name", "rounds", "stream_version"}
TENSORS_KEYS = {"file", "sha256", "bytes"}
_LAYER_KEYS_V1 = {"name", "in_features", "out_features", "seed", "stream", "init", "rank", "alpha", "use_rslora",
                  "scaling", "bias", "fingerprint"}
# Format 1 records the stream version once, in the generator (every layer was stream v1);
# format 2 records each layer's, and the generator's is the newest in use.
LAYER_KEYS = {1: _LAYER_KEYS_V1, 2: _LAYER_KEYS_V1 | {"stream_version"}}
# A layer's named adapters, in a whole-model checkpoint whose layer has any; an adapter
# checkpoint's layers record that adapter's dropout; "use_dora" (always true where present) marks
# a layer whose default adapter is DoRA, whose tensors include <layer>.lora_magnitude;
# "weight_shape" ([out, in // groups, *kernel_size]) marks a seeded conv and its kernel.
OPTIONAL_LAYER_KEYS = {1: set(), 2: {"adapters", "lora_dropout", "use_dora", "weight_shape"}}
# A layer's (or named adapter's) rank is at most int32's largest: far above any adapter's (a
# layer accepts ranks above its features, so they bound nothing), and low enough that the
# scaling a reader computes from a file's rank, a float, cannot overflow.
MAX_RANK = 2**31 - 1
ADAPTER_KEYS = {"rank", "alpha", "use_rslora", "scaling", "lora_dropout"}
U64_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
HEX16 = re.compile(r"[0-9a-f]{16}")
HEX64 = re.compile(r"[0-9a-f]{64}")


def fail(directory: Path, message: str):
    raise ValueError(f"checkpoint {directory}: {message}")


def shorten(value, limit: int = 120) -> str:
    """repr(value), cut to ``limit`` characters: values in messages come from the file."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...(cut)"


def terminal_safe(text: str) -> str:
    """``text`` with every non-printable character (ANSI escapes, newlines, ...) written as its
    Python escape, for printing names read from a file to a terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
