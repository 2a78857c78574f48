"""Pruning of the cast copies of component files (`mapped_weights`) that no load can use any more.

A cast copy (`<conversion cache>/components/<stem>-<dtype>-<digest>.safetensors`) is keyed by its source's
path, size and modification time, the key prefix and the dtype: when the source file changes, later loads
write a new copy and the old one would stay forever. So each copy records its source in its safetensors
metadata (`cast_copy_metadata`), and publishing a new copy (`prune_cast_copies`) removes the copies of the
same source path and dtype written from another version of the source. Copies of the source's current
version are kept whatever their key prefix (another part of the same file uses them), as are copies of other
sources and dtypes, and copies without the record (written before it existed: their source is unknown).
Leftover temporary files (`.tmp-*`, from a writer that died) older than a day are removed too.

Removing a copy a running replica still maps is safe: the mapping keeps the inode until it is unmapped.
Every failure is logged and ignored: pruning never fails a load.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import torch

from serve_app.model.inspection.safetensors_header import read_safetensors_header

logger = logging.getLogger(__name__)

SOURCE_KEY = "dreamlab.cast_source"  # the source file's resolved path
VERSION_KEY = "dreamlab.cast_source_version"  # its size and modification time (ns) when the copy was cast
DTYPE_KEY = "dreamlab.cast_dtype"
TEMP_PREFIX = ".tmp-"
TEMP_MAX_AGE_S = 24 * 3600


def _source_version(source: Path) -> str:
    st = source.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def cast_copy_metadata(metadata: dict[str, str] | None, source: Path, dtype: torch.dtype) -> dict[str, str]:
    """The metadata of a cast copy of `source` in `dtype`: the source's own, plus the record of its source."""
    return {**(metadata or {}), SOURCE_KEY: str(source.resolve()), VERSION_KEY: _source_version(source),
            DTYPE_KEY: str(dtype).removeprefix("torch.")}


def copy_stem(source: Path) -> str:
    """What the names of `source`'s cast copies start with (`<stem>-<dtype>-<digest>.safetensors`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", source.name.removesuffix(".safetensors"))[:48]


def _record(copy: Path) -> dict[str, str]:
    """A cast copy's record of its source (its metadata); empty when unreadable (half-removed, not safetensors):
    such a file is not ours to judge."""
    try:
        return read_safetensors_header(copy)[1]
    except Exception:
        return {}


def _stale_copy(copy: Path, source: str, version: str, dtype: str) -> bool:
    metadata = _record(copy)
    return (metadata.get(SOURCE_KEY) == source and metadata.get(DTYPE_KEY) == dtype
            and metadata.get(VERSION_KEY) not in (None, version))


def _remove(path: Path, why: str) -> None:
    try:
        path.unlink()
        logger.info("component weights: removed %s (%s)", path, why)
    except FileNotFoundError:
        pass  # another replica pruned it first
    except OSError as exc:
        logger.warning("component weights: cannot remove %s (%s): %s", path, why, exc)


def prune_cast_copies(source: Path, dtype: torch.dtype, published: Path, now: float | None = None) -> list[Path]:
    """After `published` (a cast copy of `source` in `dtype`) was written: remove the copies beside it of an
    older version of the same source in the same dtype, and day-old temporary files; the paths removed."""
    now = time.time() if now is None else now
    folder = published.parent
    removed: list[Path] = []
    try:
        version = _source_version(source)
        entries = list(os.scandir(folder))
    except OSError as exc:
        logger.warning("component weights: cannot prune %s: %s", folder, exc)
        return removed
    want = str(source.resolve()), version, str(dtype).removeprefix("torch.")
    same_name = published.name.rsplit("-", 1)[0] + "-"  # <stem>-<dtype>-: the copies of this stem and dtype
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith(TEMP_PREFIX):
            try:
                old = now - entry.stat(follow_symlinks=False).st_mtime > TEMP_MAX_AGE_S
            except OSError:
                continue
            if old:
                _remove(path, "a temporary file over a day old")
                removed.append(path)
        elif (path != published and entry.name.startswith(same_name) and entry.name.endswith(".safetensors")
              and _stale_copy(path, *want)):
            _remove(path, f"a cast of an older version of {source}")
            removed.append(path)
    return removed


def prune_copies_of(source: Path, folder: Path) -> list[Path]:
    """Remove every cast copy in `folder` of `source`, a file that is gone for good (a shared part no checkpoint
    links any more, `mapped_folder`); the paths removed."""
    resolved = str(source.resolve())
    stem = copy_stem(source) + "-"
    removed: list[Path] = []
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(stem) and p.suffix == ".safetensors"]
    except OSError:
        return removed
    for path in candidates:
        if _record(path).get(SOURCE_KEY) == resolved:
            _remove(path, f"a cast of {source.name}, which no checkpoint uses any more")
            removed.append(path)
    return removed
