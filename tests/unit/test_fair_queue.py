"""Round-robin dispatch by client: a burst from one client delays another's request by one request."""

from __future__ import annotations

import asyncio

import pytest

from deployments.router.fair_queue import FairQueue
from serve_app.core.errors import QueueFullError


async def _run(queue: FairQueue, client: str, label: str, order: list[str], release: asyncio.Event) -> None:
    async with queue.slot(client):
        order.append(label)
        await release.wait()


def test_a_burst_does_not_starve_another_client() -> None:
    async def scenario() -> list[str]:
        queue = FairQueue("m", capacity=lambda: 1, max_waiting=-1, max_waiting_per_client=100)
        order: list[str] = []
        gates = {f"a{i}": asyncio.Event() for i in range(6)} | {"b0": asyncio.Event()}
        tasks = [asyncio.create_task(_run(queue, "A", f"a{i}", order, gates[f"a{i}"])) for i in range(6)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(_run(queue, "B", "b0", order, gates["b0"])))
        await asyncio.sleep(0)
        assert order == ["a0"] and queue.waiting("A") == 5 and queue.waiting("B") == 1
        for _ in range(7):  # finish whatever runs, one at a time
            gates[order[-1]].set()
            for _ in range(5):
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert queue.out == 0 and queue.waiting() == 0
        return order

    order = asyncio.run(scenario())
    assert order.index("b0") <= 2, order  # behind the running a0 and at most one more of A's
    assert sorted(order) == sorted(["b0", *(f"a{i}" for i in range(6))])


def test_capacity_and_the_per_client_bound() -> None:
    async def scenario() -> None:
        queue = FairQueue("m", capacity=lambda: 2, max_waiting=5, max_waiting_per_client=1)
        hold = asyncio.Event()
        order: list[str] = []
        running = [asyncio.create_task(_run(queue, "A", f"a{i}", order, hold)) for i in range(3)]
        await asyncio.sleep(0)
        assert queue.out == 2 and queue.waiting("A") == 1
        with pytest.raises(QueueFullError, match="you have 1"):  # A's share of the queue is used up
            async with queue.slot("A"):
                pass
        small = FairQueue("n", capacity=lambda: 0, max_waiting=1, max_waiting_per_client=10)
        parked = asyncio.create_task(_run(small, "B", "b0", order, hold))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="full queue"):  # the mode's whole queue is used up
            async with small.slot("C"):
                pass
        parked.cancel()
        hold.set()
        await asyncio.gather(*running)
        assert order == ["a0", "a1", "a2"] and queue.out == 0

    asyncio.run(scenario())


def test_a_client_that_goes_away_while_waiting_leaves_no_trace() -> None:
    async def scenario() -> None:
        queue = FairQueue("m", capacity=lambda: 1, max_waiting=10, max_waiting_per_client=10)
        hold = asyncio.Event()
        order: list[str] = []
        first = asyncio.create_task(_run(queue, "A", "a0", order, hold))
        await asyncio.sleep(0)
        gone = asyncio.create_task(_run(queue, "B", "b0", order, hold))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert queue.waiting() == 0
        hold.set()
        await first
        assert order == ["a0"] and queue.out == 0

    asyncio.run(scenario())
