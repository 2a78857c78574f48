"""Fair sharing of one mode between clients, in the router.

Serve queues a mode's requests first come, first served, so four clients sending their largest requests
would push a fifth client's small one behind all of theirs. The router therefore sends at most
`capacity()` requests of a mode on at once (about what its replicas run); the others wait here in one
queue per client and leave round-robin by client. A request then waits behind at most one request of
each other busy client, however many they sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable

from serve_app.core.errors import QueueFullError


class FairQueue:
    def __init__(self, mode: str, capacity: Callable[[], int], max_waiting: int, max_waiting_per_client: int) -> None:
        """`max_waiting`: the mode's queue bound (-1: none); `max_waiting_per_client`: one client's share."""
        self.mode = mode
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.max_waiting_per_client = max_waiting_per_client
        self.out = 0  # requests sent on and not back yet
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    def waiting(self, client: str | None = None) -> int:
        if client is not None:
            return len(self._waiting.get(client, ()))
        return sum(len(q) for q in self._waiting.values())

    @contextlib.asynccontextmanager
    async def slot(self, client: str) -> AsyncIterator[None]:
        """Hold one of the mode's dispatch slots for `client` while the body runs."""
        await self._acquire(client)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, client: str) -> None:
        if not self._waiting and self.out < self.capacity():
            self.out += 1
            return
        if 0 <= self.max_waiting <= self.waiting():
            raise QueueFullError(f"mode {self.mode!r} has a full queue; retry later", retry_after_s=1)
        if self.waiting(client) >= self.max_waiting_per_client:
            raise QueueFullError(f"you have {self.waiting(client)} requests waiting for mode {self.mode!r}; "
                                 "retry later", retry_after_s=2)
        queue = self._waiting.setdefault(client, deque())
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await turn  # `wake` counts the slot as ours before it resolves the future
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # given a slot just as the client went away: pass it on
            elif turn in queue:
                queue.remove(turn)
                if not queue:
                    self._waiting.pop(client, None)
            raise

    def _release(self) -> None:
        self.out -= 1
        self.wake()

    def wake(self) -> None:
        """Hand free slots to waiting clients, one request per client in turn (also when capacity grew)."""
        while self._waiting and self.out < self.capacity():
            client, queue = next(iter(self._waiting.items()))
            turn = queue.popleft()
            if queue:
                self._waiting.move_to_end(client)
            else:
                del self._waiting[client]
            if not turn.done():
                self.out += 1
                turn.set_result(None)
