"""A small in-memory store for images served by URL (OpenAI `response_format: url`).

Bounded by count and age (`cachetools.TTLCache`): an image stays fetchable for `ttl_s` seconds or until
`max_items` others push it out (the least recently used first). It lives in the router replica that made
the image (one router replica by default).
"""

from __future__ import annotations

import uuid

from cachetools import TTLCache


class ImageStore:
    def __init__(self, max_items: int = 256, ttl_s: float = 600.0) -> None:
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._items: TTLCache[str, tuple[bytes, str]] = TTLCache(maxsize=max_items, ttl=ttl_s)

    def put(self, data: bytes, media_type: str) -> str:
        key = uuid.uuid4().hex
        self._items[key] = (data, media_type)
        return key

    def get(self, key: str) -> tuple[bytes, str] | None:
        item: tuple[bytes, str] | None = self._items.get(key)
        return item
