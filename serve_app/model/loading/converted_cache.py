"""On-disk cache of single-file checkpoints converted to the diffusers layout, so only the first load converts.

diffusers converts the original (A1111) key layout on every `from_single_file`; a diffusers folder loads
without that. An entry is such a folder (`save_pretrained`) plus a manifest, under `<root>/<stem>-<digest>/`.

- **Key**: the file's path, size, mtime_ns and header hash (its 8-byte length + JSON header, which names
  every tensor with its dtype, shape and offsets), the family, a hash of the config folder used for the
  conversion, and the diffusers/transformers versions (another version may convert differently). A changed
  file gets a new key, so a stale entry is never looked up; it is pruned when its successor is written.
- **Publishing**: an entry is filled in a temporary sibling folder, its manifest (key, every file's size and
  digest) is written last, and the folder is renamed into place in one step. Concurrent writers (two
  replicas on one node) each fill their own folder; the loser of the rename uses the winner's entry.
- **Trust**: an entry is used only when its manifest matches the key and every file has its recorded size
  and digest (the whole file for small files, the header for `.safetensors` files: rehashing the tensor
  bytes on each load would cost more than the load; truncation shows in the size). Anything else, and an
  entry that fails to load, is removed and rebuilt from the single file.

Where: `cache_dir` when given, else `$DREAMLAB_CACHE_DIR`, else `<checkpoint's folder>/.dreamlab-cache`;
`off` turns caching off. A cache folder that cannot be written is reported and the load goes direct.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from serve_app.core.errors import CheckpointNotFoundError, CorruptCheckpointError
from serve_app.model.inspection.safetensors_header import read_header_bytes

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "DREAMLAB_CACHE_DIR"
DEFAULT_CACHE_DIR_NAME = ".dreamlab-cache"
CACHE_OFF = "off"
MANIFEST_NAME = "dreamlab-cache.json"
LAYOUT_VERSION = 1  # bump when what an entry holds, or how it is converted, changes
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_ABANDONED_AFTER_S = 24 * 3600  # a temporary folder this old belongs to a writer that died
_CHUNK = 1024 * 1024


def resolve_cache_dir(checkpoint: Path, cache_dir: str | Path | None = None) -> Path | None:
    """The cache folder for `checkpoint`: `cache_dir`, else `$DREAMLAB_CACHE_DIR`, else next to it; None if `off`."""
    chosen = cache_dir or os.environ.get(CACHE_DIR_ENV) or None
    if chosen is None:
        return Path(checkpoint).parent / DEFAULT_CACHE_DIR_NAME
    if str(chosen).strip().lower() == CACHE_OFF:
        return None
    return Path(chosen).expanduser()


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "none"


def sha256_file(path: Path, limit: int | None = None) -> str:
    """The SHA-256 of the file (of its first `limit` bytes), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    remaining = limit
    with path.open("rb") as fh:
        while remaining is None or remaining > 0:
            chunk = fh.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return digest.hexdigest()


def _file_record(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        try:
            with path.open("rb") as fh:
                header = read_header_bytes(fh, size, path)
        except CorruptCheckpointError:  # garbage: a bounded prefix still changes when the file does
            return {"bytes": size, "header_sha256": sha256_file(path, 64 * 1024)}
        return {"bytes": size, "header_sha256": hashlib.sha256(header).hexdigest()}
    return {"bytes": size, "sha256": sha256_file(path)}


@lru_cache(maxsize=32)
def _folder_digest(folder: str, signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for rel, _, _ in signature:
        digest.update(rel.encode() + b"\0")
        digest.update(sha256_file(Path(folder) / rel).encode())
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    """Hash of every file (path and content) under `folder`; recomputed only when a file's size or mtime changes."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    signature = tuple((p.relative_to(folder).as_posix(), *_size_mtime(p)) for p in files)
    return _folder_digest(str(folder), signature)


def _size_mtime(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class CacheKey:
    """Everything a converted entry depends on; equal keys mean the entry holds this file's conversion."""

    source: str
    file_bytes: int
    mtime_ns: int
    header_sha256: str
    family: str
    config_sha256: str
    diffusers: str
    transformers: str
    layout: int = LAYOUT_VERSION

    @classmethod
    def for_checkpoint(cls, checkpoint: Path, family: str, config_dir: Path) -> CacheKey:
        """Stat and header of the same open file, so a file replaced meanwhile cannot mix two versions."""
        try:
            with checkpoint.open("rb") as fh:
                st = os.fstat(fh.fileno())
                header = read_header_bytes(fh, st.st_size, checkpoint)
        except FileNotFoundError as exc:
            raise CheckpointNotFoundError(f"{checkpoint}: checkpoint path does not exist", param="checkpoint") from exc
        return cls(
            source=str(checkpoint), file_bytes=st.st_size, mtime_ns=st.st_mtime_ns,
            header_sha256=hashlib.sha256(header).hexdigest(), family=family,
            config_sha256=folder_digest(config_dir), diffusers=_package_version("diffusers"),
            transformers=_package_version("transformers"))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def entry_name(self) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.source).name.removesuffix(".safetensors"))[:48]
        return f"{stem.strip('.-') or 'checkpoint'}-{self.digest()[:20]}"

    def same_file_version(self, other: dict[str, Any]) -> bool:
        return (other.get("file_bytes"), other.get("mtime_ns"), other.get("header_sha256")) == (
            self.file_bytes, self.mtime_ns, self.header_sha256)


class ConvertedCache:
    """One cache folder: look up, write and discard entries (see the module docstring for the rules)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry_path(self, key: CacheKey) -> Path:
        return self.root / key.entry_name()

    def lookup(self, key: CacheKey) -> Path | None:
        """The entry of `key` when it is complete and intact; an entry that is not is discarded."""
        entry = self.entry_path(key)
        if not entry.is_dir():
            return None
        problem = self._problem(entry, key)
        if problem is None:
            return entry
        self.discard(entry, problem)
        return None

    def _problem(self, entry: Path, key: CacheKey) -> str | None:
        """Why `entry` cannot be trusted for `key`, or None."""
        manifest_path = entry / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"{manifest_path} is missing"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"{manifest_path} is unreadable ({exc})"
        if not isinstance(manifest, dict) or manifest.get("key") != asdict(key):
            return f"{manifest_path} does not match the checkpoint"
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            return f"{manifest_path} lists no files"
        for rel, recorded in files.items():
            path = entry / rel
            if ".." in Path(rel).parts or Path(rel).is_absolute() or not isinstance(recorded, dict):
                return f"{manifest_path} has a bad record for {rel!r}"
            try:
                actual = _file_record(path)
            except OSError as exc:
                return f"{path} is missing or unreadable ({exc})"
            if actual["bytes"] != recorded.get("bytes"):
                return f"{path} has {actual['bytes']} bytes, the manifest says {recorded.get('bytes')}"
            if actual != recorded:
                return f"{path} does not match its digest in the manifest"
        return None

    def discard(self, entry: Path, reason: str, level: int = logging.WARNING) -> None:
        """Remove `entry`: renamed aside first, so no reader ever sees it half deleted."""
        logger.log(level, "conversion cache: discarding %s: %s", entry, reason)
        trash = self.root / f"{_TRASH_PREFIX}{entry.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(entry, trash)
        except FileNotFoundError:
            return  # another loader discarded it first
        except OSError as exc:
            logger.warning("conversion cache: cannot remove %s (%s); it is left in place", entry, exc)
            return
        shutil.rmtree(trash, ignore_errors=True)

    def write(self, key: CacheKey, fill: Callable[[Path], None]) -> Path | None:
        """Fill a new entry for `key` with `fill(folder)` and publish it; the published entry, or None.

        None when the cache folder cannot be written (reported as a warning) or the checkpoint changed while
        it was converted. Errors of `fill` other than OSError (a checkpoint that does not convert) propagate.
        """
        temp = self.root / f"{_TEMP_PREFIX}{key.entry_name()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            temp.mkdir()
        except OSError as exc:
            logger.warning("conversion cache folder %s is not writable (%s): loading %s without the cache",
                           self.root, exc, key.source)
            return None
        try:
            fill(temp)
            self._write_manifest(temp, key)
            if _size_mtime(Path(key.source)) != (key.file_bytes, key.mtime_ns):
                logger.warning("conversion cache: %s changed while it was converted; not caching it", key.source)
                return None
            return self._publish(temp, key)
        except OSError as exc:
            logger.warning("conversion cache: cannot write an entry for %s in %s (%s): loading without the cache",
                           key.source, self.root, exc)
            return None
        finally:
            shutil.rmtree(temp, ignore_errors=True)  # gone after a successful rename

    def _write_manifest(self, folder: Path, key: CacheKey) -> None:
        files = {p.relative_to(folder).as_posix(): _file_record(p)
                 for p in sorted(folder.rglob("*")) if p.is_file()}
        manifest = {"key": asdict(key), "files": files, "written_at": time.time()}
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")

    def _publish(self, temp: Path, key: CacheKey) -> Path | None:
        entry = self.entry_path(key)
        for _ in range(2):
            try:
                os.rename(temp, entry)  # atomic; fails when the entry exists (another writer won)
            except OSError:
                if self.lookup(key) is not None:  # the winner's entry, checked like any other
                    logger.info("conversion cache: %s was written concurrently; using that entry", entry)
                    return entry
                continue  # lookup discarded a broken one: try again
            logger.info("conversion cache: wrote %s for %s", entry, key.source)
            self._prune(key)
            return entry
        return None

    def _prune(self, key: CacheKey) -> None:
        """Remove entries of earlier versions of the same file, and temporary folders of dead writers."""
        now = time.time()
        for path in self.root.iterdir():
            try:
                if path.name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)):
                    if now - path.stat().st_mtime > _ABANDONED_AFTER_S:
                        shutil.rmtree(path, ignore_errors=True)
                    continue
                if path.name == key.entry_name() or not (path / MANIFEST_NAME).is_file():
                    continue
                old = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8")).get("key", {})
            except (OSError, ValueError, AttributeError):
                continue
            if old.get("source") == key.source and not key.same_file_version(old):
                self.discard(path, f"stale: {key.source} has changed since it was written", logging.INFO)
