"""A two-node scenario, run by `test_multi_node.py` in a process of its own (the serve tier's session Ray
is a one-node cluster, and one process holds one Ray connection).

`ray.cluster_utils.Cluster` starts two nodes in this process, each with one simulated GPU and a custom
resource that pins modes to it: `a1` and `a2` on node A, `b1` on node B. The registry budget fits one model
per device. Loading a1 and b1, then a2, must evict a1 only (node A), leave b1 on node B, and list both
nodes' devices. Prints one JSON line with what it saw; the test asserts on it.

    python tests/serve/multi_node_scenario.py MODEL_ROOT PORT WORK_DIR
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REQUEST = {"prompt": "two nodes", "width": 64, "height": 64, "steps": 2, "seed": 1}


def _mode(name: str, checkpoint: str, node: str) -> dict[str, Any]:
    return {"name": name, "checkpoint": checkpoint, "load_on_start": False,
            "deployment": {"num_replicas": 1,
                           "ray_actor_options": {"num_cpus": 0, "num_gpus": 0.3, "resources": {node: 1}}}}


def _wait_ready(url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready")


def main(model_root: Path, port: int, work: Path) -> dict[str, Any]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from serve_app.api.mode_catalog import ModeCatalog
    from serve_app.app_builder import build_app
    from serve_app.config.modes_file import ModesFile

    modes = {"modes": [_mode("a1", "tiny-sd1", "node_a"), _mode("a2", "tiny-sd2", "node_a"),
                       _mode("b1", "tiny-sd1", "node_b")]}
    estimates = [m.estimate_bytes() for m in ModeCatalog(ModesFile.model_validate(modes), model_root).modes.values()]
    budget = max(estimates) + 8 * 2**20  # one model per device
    assert budget < 2 * min(estimates)
    modes_file = work / "multi_node_modes.yaml"
    modes_file.write_text(yaml.safe_dump(modes))

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 1, "resources": {"node_a": 10}, "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=1, resources={"node_b": 10})
    ray.init(address=cluster.address, logging_level="ERROR", runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"modes_file": str(modes_file), "model_root": str(model_root),
                             "registry": {"budget_bytes": budget, "heartbeat_interval_s": 0.2}}),
                  name="multi", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        seen: dict[str, Any] = {"budget": budget}
        with httpx.Client(base_url=url, timeout=300) as client:
            for mode in ("a1", "b1"):
                client.post("/v1/txt2img", json={**REQUEST, "mode": mode}).raise_for_status()
            seen["before"] = client.get("/v1/registry").json()
            seen["a2"] = client.post("/v1/txt2img", json={**REQUEST, "mode": "a2"}).status_code
            seen["after"] = client.get("/v1/registry").json()
            seen["modes"] = {m["name"]: [m["state"], m["tier"]] for m in client.get("/v1/modes").json()["modes"]}
        return seen
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))))
