"""A small in-memory store for images served by URL (OpenAI `response_format: url`).

Bounded by count and age: an image stays fetchable for `ttl_s` seconds or until `max_items` newer ones
push it out. It lives in the router replica that made the image (one router replica by default).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict


class ImageStore:
    def __init__(self, max_items: int = 256, ttl_s: float = 600.0) -> None:
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._items: OrderedDict[str, tuple[float, bytes, str]] = OrderedDict()

    def put(self, data: bytes, media_type: str) -> str:
        self._expire()
        key = uuid.uuid4().hex
        self._items[key] = (time.monotonic(), data, media_type)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return key

    def get(self, key: str) -> tuple[bytes, str] | None:
        self._expire()
        item = self._items.get(key)
        return None if item is None else (item[1], item[2])

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.ttl_s
        while self._items and next(iter(self._items.values()))[0] < cutoff:
            self._items.popitem(last=False)
