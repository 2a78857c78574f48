"""Images served by URL (OpenAI `response_format: url`): kept by the TaskStore (files in its output store), so
any router replica answers the URL another one handed out; a router without a TaskStore keeps them in its own
memory (`serve_app.api.images.image_store.ImageStore`)."""

from __future__ import annotations

from deployments.tasks.client import TaskStoreClient
from serve_app.api.images.image_store import ImageStore


class ImageUrls:
    def __init__(self, task_store: TaskStoreClient | None = None) -> None:
        self.task_store = task_store
        self.local = ImageStore()

    async def put(self, data: bytes, media_type: str) -> str:
        if self.task_store is None:
            return self.local.put(data, media_type)
        return await self.task_store.put_image(data, media_type)

    async def get(self, key: str) -> tuple[bytes, str] | None:
        if self.task_store is None:
            return self.local.get(key)
        return await self.task_store.get_image(key)
