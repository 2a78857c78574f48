"""Work that must run to its end even when the request that started it goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def finish_even_if_cancelled(awaitable: Awaitable[T]) -> T:
    """Await `awaitable` in a task of its own. When the caller is cancelled (its client disconnected), the task
    still runs to its end, since what it does (a load that must be measured and registered, a generation
    thread that still uses the model) cannot stop halfway, and then the cancellation goes on."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the caller is gone, nobody else will
        raise
