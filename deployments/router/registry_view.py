"""What `/v1/registry` shows a client that is not an operator: the same numbers, with Ray's node and replica
ids replaced by stable-per-answer aliases (`node-1`, `sd1-2`) and shared component files named by their file
name alone (`tiny-t5xxl.safetensors`, identity `component-1`). Ids name the cluster's actors and hosts, paths its
disks; only the admin key (or an open server, which has no operators apart) sees them."""

from __future__ import annotations

from pathlib import PurePath

from deployments.protocol import RegistryStats


def redacted(stats: RegistryStats) -> RegistryStats:
    nodes = dict.fromkeys([n.node for n in stats.nodes] + [d.device.rsplit(":", 1)[0] for d in stats.devices])
    aliases = {node: f"node-{i}" for i, node in enumerate(nodes, 1)}
    per_mode: dict[str, int] = {}
    for replica, seen in stats.replicas.items():
        per_mode[seen.mode] = per_mode.get(seen.mode, 0) + 1
        aliases[replica] = f"{seen.mode}-{per_mode[seen.mode]}"
    components = [c for n in stats.nodes for c in n.components]
    for i, identity in enumerate(dict.fromkeys(c.identity for c in components), 1):
        aliases[identity] = f"component-{i}"
    aliases.update({c.path: PurePath(c.path).name for c in components})
    text = stats.model_dump_json()
    for real, alias in sorted(aliases.items(), key=lambda item: -len(item[0])):  # longest first: no partial hits
        if real:
            text = text.replace(real, alias)
    return RegistryStats.model_validate_json(text)
