"""The checkpoint's files: written so that a reader never sees half of one, and read once each,
with the tensor file's size and SHA-256 checked against the config before it is parsed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path

import torch

from .config_json import parse_config_json
from .format import ADAPTER_ONLY, CONFIG_NAME, MAX_CONFIG_BYTES, TENSORS_NAME, TRAINABLE_ONLY, fail, shorten
from .schema import check_config


@contextlib.contextmanager
def replaced_atomically(path: Path):
    """Yield a temporary path beside ``path``; once written, it replaces ``path`` in one step, so
    a reader (or another rank saving the same model) never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _not_regular(path: Path) -> str | None:
    """What ``path`` is where something other than a regular file is there (a directory, a FIFO,
    a link that leads to no file), or None: "missing" would send someone to look for a file."""
    if path.is_file() or not (path.is_symlink() or path.exists()):
        return None
    try:
        mode = path.stat().st_mode
    except OSError:  # a link to nothing, or a loop of links
        return "a symbolic link that leads to no file (dangling, or a loop)"
    kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket",
             stat.S_ISCHR: "a device", stat.S_ISBLK: "a device"}
    return next((kind for test, kind in kinds.items() if test(mode)), "not a regular file")


def require_file(directory: Path, name: str, missing: str | None = None) -> Path:
    """``directory / name``, a regular file; else ValueError: ``missing`` (default "missing
    file <name>") where nothing is there, or what is there instead."""
    path = directory / name
    if not path.is_file():
        kind = _not_regular(path)
        if kind is not None:
            fail(directory, f"{name} exists but is {kind}, not a regular file")
        fail(directory, missing or f"missing file {name}")
    return path


def read_json(directory: Path, name: str, missing: str | None = None, infinities: bool = False):
    """The JSON value of the file ``name`` in ``directory`` (``require_file``), parsed strictly
    (``parse_config_json``, ``infinities`` passed on) and read only up to MAX_CONFIG_BYTES."""
    with open(require_file(directory, name, missing), "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        fail(directory, f"{name} is larger than {MAX_CONFIG_BYTES} bytes")
    return parse_config_json(directory, raw, name, infinities)


def read_checkpoint(directory: Path) -> tuple[dict, bytes]:
    """The validated config and the tensor file's bytes, checked against the config's size and
    SHA-256. Each file is read once: the bytes checked are the bytes parsed."""
    require_file(directory, CONFIG_NAME)
    tensor_path = require_file(directory, TENSORS_NAME)
    config = read_json(directory, CONFIG_NAME)
    check_config(directory, config)
    recorded = config["tensors"]["bytes"]
    size = tensor_path.stat().st_size
    if size != recorded:
        fail(directory, f"{TENSORS_NAME} has {size} bytes, the config records {recorded}: truncated or replaced")
    with open(tensor_path, "rb") as f:
        data = f.read(recorded + 1)
    if len(data) != recorded:
        fail(directory, f"{TENSORS_NAME} changed size while it was read")
    if hashlib.sha256(data).hexdigest() != config["tensors"]["sha256"]:
        fail(directory, f"{TENSORS_NAME} does not match the SHA-256 in the config: corrupted or tampered")
    return config, data


def parse_tensors(directory: Path, data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as deserialize

    try:
        return deserialize(data)
    except Exception as exc:  # a parser fed bytes from outside: any failure means a malformed file
        fail(directory, f"{TENSORS_NAME} is not a valid safetensors file ({type(exc).__name__}: {exc})")


def tensor_contents(directory: Path, data: bytes) -> str:
    """What the tensor file holds, from its safetensors metadata: "all" (every tensor of the
    state_dict), TRAINABLE_ONLY or ADAPTER_ONLY (one adapter, ``save(adapter=...)``). The header
    is an 8-byte little-endian length and a JSON object."""
    try:
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + length].decode("utf-8")) if 8 <= 8 + length <= len(data) else None
    except (ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        fail(directory, f"{TENSORS_NAME} is not a valid safetensors file (no JSON header)")
    metadata = header.get("__metadata__") or {}
    contents = metadata.get("contents", "all") if isinstance(metadata, dict) else None
    if contents not in ("all", TRAINABLE_ONLY, ADAPTER_ONLY):
        fail(directory, f"{TENSORS_NAME} says it holds {shorten(contents)} tensors (this build reads 'all', "
                         f"{TRAINABLE_ONLY!r} and {ADAPTER_ONLY!r})")
    return contents


def read_config(directory: str | os.PathLike) -> dict:
    """The validated JSON config of a checkpoint directory (the tensor file's checksum included)."""
    return read_checkpoint(Path(directory))[0]
