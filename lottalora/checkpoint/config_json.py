"""The config file's JSON: parsed strictly (no repeated keys, no NaN or infinities, bounded
nesting) and checksummed over its canonical form."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from .format import CONFIG_NAME, FORMAT_NAME, fail, shorten


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def config_checksum(config: dict) -> str:
    """SHA-256 (hex) of the config without its "config_sha256" entry, as canonical JSON (keys
    sorted, no spaces, ASCII): it covers the config's content, not its formatting."""
    return hashlib.sha256(canonical_json({k: v for k, v in config.items() if k != "config_sha256"})).hexdigest()


def parse_config_json(directory: Path, raw: bytes, name: str = CONFIG_NAME, infinities: bool = False):
    """The JSON value of ``raw``, the bytes of the file ``name`` in ``directory``, parsed
    strictly; ValueError naming the file otherwise. ``infinities``: the bare ``Infinity`` and
    ``-Infinity`` that transformers 4 wrote for infinite config values are taken (never NaN)."""
    def unique_keys(pairs):  # json keeps the last of repeated keys without a word
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise ValueError(f"duplicate key {shorten(key)}")
            obj[key] = value
        return obj

    def no_constant(name):
        if infinities and name in ("Infinity", "-Infinity"):
            return math.inf if name == "Infinity" else -math.inf
        raise ValueError(f"{name} is not a JSON number")

    def finite_float(text):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:40]} is out of float64's range")
        return value

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys, parse_constant=no_constant,
                          parse_float=finite_float)
    except RecursionError:
        fail(directory, f"{name} nests too deeply to be a {FORMAT_NAME} checkpoint's file")
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        fail(directory, f"{name} is not valid JSON ({exc})")


def nesting_depth(value) -> int:
    """How deep lists and objects nest in a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest
