"""Calls held open per key until woken or timed out: the registry holds a replica's heartbeat this way, so
a command decided meanwhile (an eviction, a drain) is answered at once instead of at the next beat."""

from __future__ import annotations

import asyncio


class Wakeups:
    def __init__(self) -> None:
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._waiting

    async def wait(self, key: str, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for `wake(key)`; True when woken."""
        event = asyncio.Event()
        self._waiting[key] = (asyncio.get_running_loop(), event)
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            if self._waiting.get(key, (None, event))[1] is event:
                del self._waiting[key]

    def wake(self, key: str) -> None:
        """Safe from any thread (the registry's sync methods run in Serve's thread pool)."""
        waiting = self._waiting.get(key)
        if waiting is not None:
            loop, event = waiting
            loop.call_soon_threadsafe(event.set)

    def wake_all(self) -> None:
        for key in list(self._waiting):
            self.wake(key)
