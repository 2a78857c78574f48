"""The progress-stream bridge: a generation runs in a thread and reports each denoising step through a
callback; the caller consumes an async stream of `ProgressEvent`s ending with the result.

When the consumer goes away (the client disconnected), the `cancelled` flag the generation polls turns
true, so it stops at its next step, and the stream waits for it to end (the model is in use until then).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any, TypeVar

from deployments.protocol import ProgressEvent

R = TypeVar("R")
Progress = Callable[[int, int], None]
Cancelled = Callable[[], bool]


Start = Callable[[Progress, Cancelled], Coroutine[Any, Any, R]]


async def progress_stream(start: Start[R]) -> AsyncGenerator[ProgressEvent | R, None]:
    """Run `start(progress, cancelled)` as a task; yield a `ProgressEvent` per step it reports (from any
    thread), then its result."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[ProgressEvent] = asyncio.Queue()
    cancelled = False
    started = time.monotonic()

    def progress(step: int, total: int) -> None:  # runs in the generation thread
        elapsed = time.monotonic() - started
        event = ProgressEvent(step=step, total=total, elapsed_s=round(elapsed, 4),
                              eta_s=round(elapsed / step * (total - step), 4))
        loop.call_soon_threadsafe(events.put_nowait, event)

    def is_cancelled() -> bool:
        return cancelled

    task: asyncio.Task[R] = loop.create_task(start(progress, is_cancelled))
    try:
        while True:
            getter = loop.create_task(events.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            while not events.empty():
                yield events.get_nowait()
            yield task.result()
            return
    finally:
        cancelled = True
        if not task.done():
            await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieve it: after a disconnect the GenerationCancelledError is expected
