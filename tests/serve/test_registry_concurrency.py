"""The registry under concurrent callers, through a real Serve deployment (its async methods interleave on
the actor's event loop): hundreds of reserve/register/unregister/heartbeat/stats calls from several callers
at once, then the accounting invariants."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from deployments.protocol import HeartbeatReport, ModelState, Registration, ReserveStatus, Tier

pytestmark = pytest.mark.serve

GiB = 1024**3
DEV = "node-x:gpu0"
BUDGET = 10 * GiB


@pytest.fixture(scope="module")
def registry(ray_serve):
    from ray import serve

    from deployments.registry.vram_registry import VramRegistry

    app = serve.deployment(VramRegistry, name="VramRegistry").options(
        max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}).bind(
        {"simulated_vram_bytes": BUDGET, "headroom_bytes": 0, "dead_after_s": 600})
    handle = serve.run(app, name="registry-hammer", route_prefix=None)
    yield handle
    serve.delete("registry-hammer")


def _caller(handle, replica: str, seed: int) -> tuple[int, int]:
    """A replica following the protocol with random sizes; (bytes it holds at the end, grants it got)."""
    rng = random.Random(seed)
    holding, epoch, grants = 0, 0, 0
    for _ in range(40):
        if holding == 0:
            nbytes = rng.randint(1, 4) * GiB
            ans = handle.reserve.remote(replica, "m", DEV, nbytes).result()
            if ans.status is ReserveStatus.GRANTED:
                grants += 1
                epoch += 1
                handle.register.remote(Registration(replica=replica, mode="m", device=DEV, footprint_bytes=nbytes,
                                                    estimate_bytes=nbytes, measured_bytes=nbytes,
                                                    epoch=epoch)).result()
                holding = nbytes
        elif rng.random() < 0.4:
            epoch += 1
            handle.unregister.remote(replica, False, epoch).result()
            holding = 0
        answer = handle.heartbeat.remote(replica, HeartbeatReport(
            mode="m", device=DEV, state=ModelState.READY if holding else ModelState.COLD,
            tier=Tier.VRAM if holding else Tier.DISK, host_bytes=0, epoch=epoch, inflight=0, footprint_bytes=holding,
            measured_bytes=holding, estimate_bytes=holding,
            last_use=0.0, total_bytes=None, reported_used_bytes=None)).result()
        if answer.evict and holding:  # evicted for someone else: unload as a worker would
            epoch += 1
            handle.unregister.remote(replica, False, epoch).result()
            holding = 0
        handle.stats.remote().result()
    return holding, grants


def test_hundreds_of_concurrent_calls_keep_the_accounting_exact(registry):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: _caller(registry, f"replica-{i}", i), range(8)))
    stats = registry.stats.remote().result()
    (dev,) = [d for d in stats.devices if d.device == DEV]
    assert dev.used_bytes == sum(m.footprint_bytes for m in dev.models)
    assert dev.used_bytes == sum(holding for holding, _ in results)  # what the callers think they hold
    assert dev.used_bytes + dev.reserved_bytes <= dev.budget_bytes and dev.free_bytes >= 0
    assert sum(grants for _, grants in results) > 20  # the run really went through the protocol
    assert not [r for r in stats.replicas.values() if r.state is ModelState.LOADING]
