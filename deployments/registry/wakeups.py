"""Calls held open per key until woken or timed out: the registry holds a replica's heartbeat this way, so
a command decided meanwhile (an eviction, a drain) is answered at once instead of at the next beat.

A waiter is armed before the caller looks at the state it waits on, so a wake in between is not lost. All
on the registry actor's one event loop (arming, waking and waiting alike).
"""

from __future__ import annotations

import asyncio


class Wakeups:
    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Event] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._waiting

    def arm(self, key: str) -> asyncio.Event:
        """Start listening for `wake(key)`."""
        event = self._waiting[key] = asyncio.Event()
        return event

    def disarm(self, key: str, event: asyncio.Event) -> None:
        if self._waiting.get(key) is event:
            del self._waiting[key]

    async def wait(self, key: str, event: asyncio.Event, timeout_s: float) -> bool:
        """Wait up to `timeout_s` on an armed `event`; True when woken. Disarms it."""
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            self.disarm(key, event)

    def wake(self, key: str) -> None:
        event = self._waiting.get(key)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        for event in list(self._waiting.values()):
            event.set()
