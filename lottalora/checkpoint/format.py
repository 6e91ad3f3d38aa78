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
# The tensor file's metadata "contents" when save(trainable_only=True) wrote it.
TRAINABLE_ONLY = "trainable"
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
GENERATOR_KEYS = {"name", "rounds", "stream_version"}
TENSORS_KEYS = {"file", "sha256", "bytes"}
_LAYER_KEYS_V1 = {"name", "in_features", "out_features", "seed", "stream", "init", "rank", "alpha", "use_rslora",
                  "scaling", "bias", "fingerprint"}
# Format 1 records the stream version once, in the generator (every layer was stream v1);
# format 2 records each layer's, and the generator's is the newest in use.
LAYER_KEYS = {1: _LAYER_KEYS_V1, 2: _LAYER_KEYS_V1 | {"stream_version"}}
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
