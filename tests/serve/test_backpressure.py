"""Overload: 40 concurrent requests against a queue of 4 get only 200s and 503s, every one answered."""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def small_queue_app(ray_serve, demo_models_dir, tmp_path_factory):
    from ray import serve

    from tests.serve.conftest import deploy_app

    modes = {"modes": [{
        "name": "q", "checkpoint": "tiny-sd1",
        "defaults": {"width": 64, "height": 64, "steps": 8},
        "deployment": {"max_ongoing_requests": 1, "max_queued_requests": 4},
    }]}
    url = deploy_app("overload", modes, demo_models_dir, tmp_path_factory.mktemp("overload"))
    yield url
    serve.delete("overload")


def test_forty_concurrent_requests_get_200_or_503_with_retry_after(small_queue_app):
    async def burst():
        async with httpx.AsyncClient(base_url=small_queue_app, timeout=300) as client:
            return await asyncio.gather(*(client.post("/v1/txt2img", json={"prompt": f"p{i}", "seed": i})
                                          for i in range(40)))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert len(codes) == 40
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 5 and codes.count(503) >= 1, codes
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "overloaded_error"
        else:
            assert r.json()["images"][0]["b64"]
