"""Model identity as AUTOMATIC1111 users know it: the SHA-256 of a checkpoint or LoRA file, and its short
hash (A1111: the first 10 hex digits for checkpoints, 12 for LoRAs), which infotexts and Civitai use.

Hashing a multi-GB file takes seconds to minutes, so it is done once per file version (size + mtime) and
kept in `hashes.json` in the checkpoint's cache folder (the conversion cache's, see `converted_cache`);
`cached_sha256` only looks there and never reads the file, so a request never waits for a hash: callers
start `compute_sha256` in the background and show the hash once it is known. A diffusers folder has no A1111
hash; its identity is the SHA-256 of its files' hashes by relative path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import Future
from pathlib import Path

from serve_app.model.loading.converted_cache import resolve_cache_dir, sha256_file

logger = logging.getLogger(__name__)

HASHES_FILE = "hashes.json"
CHECKPOINT_SHORT = 10
LORA_SHORT = 12
CONTROL_SHORT = 8  # the ControlNet extension's titles: `name [first 8 hex digits]`
_lock = threading.Lock()  # one writer of a hashes.json at a time within a process


def _version(path: Path) -> str:
    """Size and mtime: of the file, or summed over a folder's files (a changed weight file changes it)."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    stats = [p.stat() for p in files]
    return f"{sum(s.st_size for s in stats)}:{max((s.st_mtime_ns for s in stats), default=0)}:{len(stats)}"


def _cache_file(path: Path) -> Path | None:
    folder = resolve_cache_dir(path)
    return None if folder is None else folder / HASHES_FILE


def _read_cache(cache: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_sha256(path: str | Path) -> str | None:
    """The file's SHA-256 when it was computed for this version of the file; None otherwise (no reading)."""
    path = Path(path).resolve()
    cache = _cache_file(path)
    if cache is None:
        return None
    try:
        version = _version(path)
    except OSError:
        return None
    entry = _read_cache(cache).get(str(path))
    return entry.get("sha256") if isinstance(entry, dict) and entry.get("version") == version else None


def control_title(name: str, path: str | Path) -> str:
    """A1111's title of a ControlNet: `name [hash]` once the file has been hashed (a replica hashes each one it
    loads), else the name."""
    sha = cached_sha256(path)
    return f"{name} [{sha[:CONTROL_SHORT]}]" if sha else name


def compute_sha256(path: str | Path) -> str:
    """Hash the file (or a diffusers folder) and remember it for this version; blocking: run it off-loop."""
    path = Path(path).resolve()
    found = cached_sha256(path)
    if found is not None:
        return found
    version = _version(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        lines = "".join(f"{p.relative_to(path)}\t{sha256_file(p)}\n" for p in files)
        sha = hashlib.sha256(lines.encode()).hexdigest()
    else:
        sha = sha256_file(path)
    cache = _cache_file(path)
    if cache is not None and _version(path) == version:  # not rewritten while it was read
        with _lock:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                entries = _read_cache(cache)
                entries[str(path)] = {"version": version, "sha256": sha}
                tmp = cache.with_name(f".{HASHES_FILE}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
                tmp.replace(cache)
            except OSError as exc:  # a read-only models volume: the hash is still right, just not kept
                logger.warning("cannot keep the hash of %s in %s: %s", path, cache, exc)
    return sha


def short_hash(sha256: str | None, digits: int = CHECKPOINT_SHORT) -> str | None:
    return None if sha256 is None else sha256[:digits]


SYNC_HASH_BYTES = 512 * 1024**2
_pending: dict[Path, Future[str | None]] = {}  # the hashing under way in this process, by file


def hash_in_background(path: str | Path, sync_below_bytes: int = SYNC_HASH_BYTES) -> Future[str | None]:
    """Hash `path` (its SHA-256; None when it cannot be read) at once when it is small (under a second to read)
    or already hashed for this version, else on a daemon thread, so a replica that loads a checkpoint has its
    A1111 hash for infotexts and `/sdapi/v1/sd-models` soon after, without a request ever waiting for a
    multi-GB read. A second call while one is under way gets the same future."""
    path = Path(path).resolve()
    with _lock:
        running = _pending.get(path)
        if running is not None and not running.done():
            return running
        future: Future[str | None] = Future()
        _pending[path] = future

    def run() -> None:
        try:
            future.set_result(compute_sha256(path))
        except OSError as exc:
            logger.warning("cannot hash %s: %s", path, exc)
            future.set_result(None)

    try:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        quick = sum(p.stat().st_size for p in files) < sync_below_bytes or cached_sha256(path) is not None
    except OSError:
        quick = True  # `run` reports it
    if quick:
        run()
    else:
        threading.Thread(target=run, name="dreamlab-hash", daemon=True).start()
    return future
