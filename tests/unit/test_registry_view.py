"""A client that is not an operator sees the registry's numbers with aliases for Ray's node and replica ids."""

from __future__ import annotations

from deployments.protocol import DeviceStats, ModelState, NodeStats, RegistryStats, ReplicaStats
from deployments.router.registry_view import redacted

NODE = "8f3a9c0d1e2b4f5a6b7c8d9e0f1a2b3c"


def test_ids_are_replaced_and_numbers_kept() -> None:
    stats = RegistryStats(
        devices=[DeviceStats(device=f"{NODE}:gpu0", total_bytes=8, budget_bytes=7, used_bytes=1, reserved_bytes=0,
                             free_bytes=6, reported_used_bytes=None, simulated=True, models=[])],
        nodes=[NodeStats(node=NODE, ram_budget_bytes=4, ram_used_bytes=0, models=[])], draining=False,
        replicas={"x1y2z3": ReplicaStats(mode="sd1", device=f"{NODE}:gpu0", inflight=2, state=ModelState.READY),
                  "q9w8e7": ReplicaStats(mode="sd1", device=f"{NODE}:gpu0", inflight=0, state=ModelState.COLD)})
    shown = redacted(stats)
    text = shown.model_dump_json()
    assert NODE not in text and "x1y2z3" not in text and "q9w8e7" not in text
    assert shown.devices[0].device == "node-1:gpu0" and shown.nodes[0].node == "node-1"
    assert sorted(shown.replicas) == ["sd1-1", "sd1-2"]
    assert shown.devices[0].free_bytes == 6 and shown.replicas["sd1-1"].inflight == 2
