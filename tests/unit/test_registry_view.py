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


def test_shared_component_files_show_their_file_name_only() -> None:
    from deployments.protocol import SharedComponentStats

    path = "/srv/private/models/components/t5xxl_fp16.safetensors"
    identity = "2049:1234567:9787842560:1733500000:"
    shared = SharedComponentStats(identity=identity, path=path, kind="t5xxl", host_bytes=10,
                                  modes=["flux", "flux-schnell"], replicas=["x1y2z3"], ram_tier_modes=["flux"])
    stats = RegistryStats(devices=[], nodes=[NodeStats(node=NODE, ram_budget_bytes=4, ram_used_bytes=10, models=[],
                                                       components=[shared])], draining=False, replicas={})
    shown = redacted(stats).nodes[0].components[0]
    assert shown.path == "t5xxl_fp16.safetensors" and shown.identity == "component-1"
    assert shown.modes == ["flux", "flux-schnell"] and shown.host_bytes == 10
    assert "/srv/private" not in redacted(stats).model_dump_json()
