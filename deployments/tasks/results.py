"""The output store: finished task results (and images served by URL) as files in a directory, so they
survive restarts without living in an actor's memory. The task database keeps the path (relative to the
store's root), never the bytes. Writes are atomic (a temporary file renamed into place), so a crash leaves
either the whole file or none.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ResultStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if self.root not in path.parents:
            raise ValueError(f"{relative!r} is outside the output store")
        return path

    def _write(self, relative: str, data: bytes) -> int:
        path = self._path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        return len(data)

    def put_result(self, task_id: str, result: dict[str, Any]) -> tuple[str, int]:
        """Store a task's result (its response JSON): (path for the database, bytes written)."""
        if not _SAFE_NAME.fullmatch(task_id):
            raise ValueError(f"bad task id {task_id[:16]!r}")
        relative = f"tasks/{task_id[:2]}/{task_id}.json"
        return relative, self._write(relative, json.dumps(result, separators=(",", ":")).encode())

    def get_result(self, relative: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(relative).read_bytes())
        except FileNotFoundError:
            return None

    def put_image(self, image_id: str, data: bytes, extension: str) -> str:
        if not _SAFE_NAME.fullmatch(image_id) or not extension.isalnum():
            raise ValueError(f"bad image id {image_id[:16]!r}")
        relative = f"images/{image_id[:2]}/{image_id}.{extension}"
        self._write(relative, data)
        return relative

    def read(self, relative: str) -> bytes | None:
        try:
            return self._path(relative).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, relative: str) -> None:
        self._path(relative).unlink(missing_ok=True)

    def find_image(self, image_id: str, max_age_s: float) -> tuple[bytes, str] | None:
        """(bytes, extension) of an image put at most `max_age_s` ago; None when unknown or older."""
        if not _SAFE_NAME.fullmatch(image_id):
            return None
        for path in (self.root / "images" / image_id[:2]).glob(f"{image_id}.*"):
            if time.time() - path.stat().st_mtime <= max_age_s:
                return path.read_bytes(), path.suffix.lstrip(".")
        return None

    def sweep_images(self, max_age_s: float) -> int:
        """Delete images older than `max_age_s`: how many."""
        gone = 0
        for path in (self.root / "images").glob("*/*"):
            if time.time() - path.stat().st_mtime > max_age_s:
                path.unlink(missing_ok=True)
                gone += 1
        return gone
