"""Per-node accounting on a two-node Ray cluster (see `multi_node_scenario.py`, run in its own process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.serve

SCENARIO = Path(__file__).with_name("multi_node_scenario.py")
REPO = Path(__file__).resolve().parents[2]
PORT = 8124  # the session's Serve holds 8123


def _models_by_device(stats: dict) -> dict[str, list[str]]:
    return {d["device"]: sorted(m["mode"] for m in d["models"]) for d in stats["devices"]}


def test_an_eviction_happens_only_on_the_node_that_needs_the_room(demo_models_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, str(SCENARIO), str(demo_models_dir), str(PORT), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])

    before, after = _models_by_device(seen["before"]), _models_by_device(seen["after"])
    assert len(before) == 2 and len({d.split(":")[0] for d in before}) == 2  # both nodes' devices are listed
    (device_a,) = [d for d, models in before.items() if models == ["a1"]]
    (device_b,) = [d for d, models in before.items() if models == ["b1"]]
    assert seen["a2"] == 200
    assert after[device_a] == ["a2"]  # a1 made room on its own node
    assert after[device_b] == ["b1"]  # node B was not touched
    ram = {n["node"]: [m["mode"] for m in n["models"]] for n in seen["after"]["nodes"]}
    assert ram[device_a.split(":")[0]] == ["a1"] and ram.get(device_b.split(":")[0], []) == []
    assert all(d["used_bytes"] <= d["budget_bytes"] == seen["budget"] for d in seen["after"]["devices"])
    assert seen["modes"] == {"a1": ["offloaded", "ram"], "a2": ["ready", "vram"], "b1": ["ready", "vram"]}
