"""Integrity of saved folders (training checkpoints, final models): sha256 manifests, checked on load.

Writing: :func:`write_manifest` records the size and sha256 of every file of a folder in
``manifest.json`` (training calls it for each checkpoint and each stage's ``final`` model).
Reading: :func:`verify_folder` re-hashes the listed files and raises :class:`CheckpointError` naming
the first bad one, in one line. Files added later (an ``eval_*.json`` beside a model) are not
checked. A folder without a manifest (older runs, converted checkpoints) gets a structural check of
its safetensors files instead: a truncated file is caught, a flipped bit in the payload is not.

A leaf module: standard library only, usable by inference, evaluation and training alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 22  # 4 MiB reads


class CheckpointError(RuntimeError):
    """A saved folder is incomplete or damaged; the message names the folder and the bad file."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike[str]) -> Path:
    """Writes ``manifest.json``: ``{"files": {relative path: {"size", "sha256"}}}`` of every file.

    Returns:
        The manifest's path.
    """
    folder = Path(folder)
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    out = folder / MANIFEST_FILE
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"format": 1, "files": files}, indent=1))
    tmp.replace(out)
    return out


def verify_folder(folder: str | os.PathLike[str], hashes: bool = True) -> None:
    """Checks a saved folder against its manifest (or, without one, its safetensors structure).

    Args:
        folder: The checkpoint or model folder.
        hashes: Compare sha256 (slow for big models); False checks sizes only.

    Raises:
        CheckpointError: One line naming the bad file and what is wrong with it.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        logger.debug("%s: no %s; checking safetensors structure only", folder, MANIFEST_FILE)
        for path in sorted(folder.rglob("*.safetensors")):
            check_safetensors(path)
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest}: unreadable manifest ({err})") from None
    for rel, entry in files.items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {MANIFEST_FILE})")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(f"{path}: {size:,} bytes, the manifest says {entry['size']:,} (truncated?)")
        if hashes and sha256_file(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: sha256 does not match the manifest (the file is corrupted)")


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """Checks a safetensors file's header and that its size matches the tensors it declares.

    Raises:
        CheckpointError: Unreadable header, or a file shorter/longer than the header says.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {size} bytes, too short for a safetensors file (truncated?)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"{path}: header of {n:,} bytes in a {size:,}-byte file (truncated?)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: unreadable safetensors header ({err})") from None
    try:
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError) as err:
        raise CheckpointError(f"{path}: malformed safetensors header ({err})") from None
    if 8 + n + end != size:
        raise CheckpointError(f"{path}: {size:,} bytes, its header describes {8 + n + end:,} (truncated?)")
