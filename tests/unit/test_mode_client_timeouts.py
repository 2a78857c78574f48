"""A mode replica that never answers: the call ends in a 504 naming the mode, and the call is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from deployments.router.mode_client import within
from serve_app.core.errors import WorkerTimeoutError


class _Hanging:
    """What a handle's response looks like to the caller when the replica is stopped: it never resolves."""

    def __init__(self) -> None:
        self.cancelled = False

    def __await__(self):
        return asyncio.get_running_loop().create_future().__await__()

    def cancel(self) -> None:
        self.cancelled = True


def test_a_call_past_its_deadline_is_a_504_and_is_cancelled() -> None:
    response = _Hanging()
    with pytest.raises(WorkerTimeoutError, match="mode 'sd1' did not answer the generation within 0.05 s") as err:
        asyncio.run(within(response, 0.05, "mode 'sd1'", "generation"))
    assert err.value.status_code == 504 and err.value.retry_after_s == 5
    assert response.cancelled


def test_a_call_in_time_answers() -> None:
    async def answer() -> str:
        await asyncio.sleep(0.01)
        return "done"

    assert asyncio.run(within(answer(), 1.0, "mode 'sd1'", "generation")) == "done"
