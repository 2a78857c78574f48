"""Checkpoint refresh without Ray: what a rescan adds and takes away (`plan_refresh`), how the registry's
operator state records it (`ControlState.change_modes`), and how the change reaches every router (two
gateways over one in-process `VramRegistry`, and one that starts later). Serve itself is faked at the edge
(deploy, delete, handles): the serve test `tests/serve/test_checkpoint_refresh.py` runs the real thing."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from deployments.protocol import AddedMode, OperatorState, UnloadAnswer
from deployments.registry.client import RegistryClient
from deployments.registry.control import ControlState
from deployments.registry.vram_registry import VramRegistry
from deployments.router.gateway import Gateway
from deployments.router.ingress import create_http_app
from deployments.router.mode_client import ModeClient
from deployments.router.mode_refresh import ModeRefresher
from serve_app.api.adapter_catalog import AdapterCatalog
from serve_app.api.mode_catalog import ModeCatalog
from serve_app.api.mode_changes import AddedCheckpoint, plan_refresh
from serve_app.config.app_args import PlacementConfig
from serve_app.config.deployment_plan import ModeLaunch
from serve_app.config.modes_file import ModeConfig, ModesFile, discover_checkpoints

APP = "app"


def _mode(name: str, checkpoint: str, **extra: Any) -> ModeConfig:
    return ModeConfig(name=name, checkpoint=checkpoint, **extra)


# -- what a rescan changes ---------------------------------------------------------------------------------
def test_a_new_checkpoint_is_added_and_a_served_one_is_not_added_again(tmp_path: Path) -> None:
    configured = [_mode("base", "sd1.safetensors", aliases=["sd2"])]  # an alias takes the name `sd2` too
    found = [_mode("sd1", "sd1.safetensors"), _mode("sd2", "sd2.safetensors"), _mode("xl", "./xl.safetensors")]
    plan = plan_refresh(configured, [AddedCheckpoint("xl", "xl.safetensors")], found, [], tmp_path,
                        exists=lambda path: True)
    # sd1.safetensors is the configured `base` (by path, not name); xl was added before; sd2 is new, renamed
    assert [(m.name, m.checkpoint) for m in plan.add] == [("sd2-2", "sd2.safetensors")]
    assert plan.drop == [] and plan.removed == []


def test_gone_checkpoints_drop_added_modes_and_remove_configured_ones(tmp_path: Path) -> None:
    configured = [_mode("base", "sd1.safetensors"), _mode("deep", "sub/deep.safetensors")]
    added = [AddedCheckpoint("kept", "kept.safetensors"), AddedCheckpoint("gone", "gone.safetensors"),
             AddedCheckpoint("base-copy", "sd1.safetensors")]  # configured since (a redeploy discovered it)
    found = [_mode("sd1", "sd1.safetensors"), _mode("kept", "kept.safetensors"), _mode("gone", "gone.safetensors")]
    present = {str(tmp_path / "sd1.safetensors"), str(tmp_path / "kept.safetensors")}
    plan = plan_refresh(configured, added, [m for m in found if m.name != "gone"], [], tmp_path,
                        exists=present.__contains__)
    assert plan.drop == ["gone", "base-copy"]
    assert plan.removed == ["deep"]  # not scanned by discovery (a sub-folder), but its file is gone
    assert plan.add == []
    # a dropped mode's name is free again for a new file
    again = plan_refresh(configured, added, [_mode("gone", "other/../gone2.safetensors")], [], tmp_path,
                         exists=present.__contains__)
    assert [m.name for m in again.add] == ["gone"]


def test_the_registry_records_each_added_mode_once() -> None:
    control = ControlState(clock=lambda: 0.0, dead_after_s=6.0)
    sd2 = AddedMode(name="sd2", checkpoint="sd2.safetensors", app="app--sd2")
    state, accepted = control.change_modes([sd2], [], [])
    assert accepted == ["sd2"] and state.added_modes == [sd2] and state.version == 1
    # a second router's refresh of the same file: nothing new, no version bump, nothing for it to deploy
    state, accepted = control.change_modes([sd2.model_copy(update={"app": "elsewhere"})], [], [])
    assert accepted == [] and state.version == 1 and state.added_modes[0].app == "app--sd2"
    state, accepted = control.change_modes([], ["sd2"], ["base"])
    assert state.added_modes == [] and state.removed_modes == ["base"] and state.version == 2
    # the state survives a registry restart through the routers' copies, as the default mode does
    fresh = ControlState(clock=lambda: 0.0, dead_after_s=6.0)
    assert fresh.router_poll("r1", 0, state).removed_modes == ["base"]


# -- the change reaches every router -----------------------------------------------------------------------
class InProcessHandle:
    """A deployment handle over a plain object: `handle.method.remote(...)` awaits `obj.method(...)`."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Any:
        return SimpleNamespace(remote=getattr(self.target, name))


class RecordingWorkers(ModeClient):
    def __init__(self, handles: dict[str, Any]) -> None:
        super().__init__(handles)
        self.unloaded: list[str] = []

    async def unload(self, mode: str) -> UnloadAnswer:
        self.unloaded.append(mode)
        return UnloadAnswer(status="unloaded", mode=mode, replica="r1")


class FakeServe:
    """The Serve side of a refresh: the applications deployed and deleted."""

    def __init__(self) -> None:
        self.apps: list[str] = []
        self.deployed: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[str] = []

    async def deploy(self, app: str, modes: list[dict[str, Any]], options: dict[str, Any], *rest: Any) -> list[str]:
        names = [f"{app}--{m['name']}" for m in modes]
        self.deployed += [(m["name"], options[m["name"]]) for m in modes]
        self.apps += names
        return names

    def delete(self, names: list[str]) -> None:
        self.deleted += names
        self.apps = [a for a in self.apps if a not in names]

    def list(self, app: str) -> list[str]:
        return list(self.apps)


def _router(root: Path, registry: RegistryClient, serve: FakeServe,
            modes: list[ModeConfig]) -> tuple[Gateway, ModeRefresher]:
    catalog = ModeCatalog(ModesFile(modes=modes), root)
    gateway = Gateway(catalog=catalog, adapters=AdapterCatalog(None),
                      workers=RecordingWorkers({m.name: f"handle:{APP}/{m.name}" for m in modes}), registry=registry)
    refresher = ModeRefresher(gateway, model_root=root, app=APP, registry="registry-handle",
                              launch=ModeLaunch(discover=True, placement=PlacementConfig(default_num_gpus=0)),
                              deploy=serve.deploy, delete=serve.delete, apps=serve.list,
                              handle=lambda mode, app: f"handle:{app}/{mode}")
    gateway.on_state = refresher.sync
    return gateway, refresher


@pytest.fixture()
def model_root(tmp_path: Path, demo_models_dir: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    for name in ("tiny-sd1.safetensors", "tiny-sdxl.safetensors"):
        shutil.copy(demo_models_dir / name, root / name)
    return root


def test_a_refresh_reaches_every_router_and_a_later_one(model_root: Path, demo_models_dir: Path) -> None:
    modes = discover_checkpoints(model_root)[0]
    assert [m.name for m in modes] == ["tiny-sd1", "tiny-sdxl"]
    registry = RegistryClient(InProcessHandle(VramRegistry({})))
    serve = FakeServe()

    async def scenario() -> None:
        a, refresher_a = _router(model_root, registry, serve, modes)
        b, refresher_b = _router(model_root, registry, serve, modes)
        shutil.copy(demo_models_dir / "tiny-sd2.safetensors", model_root / "tiny-sd2.safetensors")
        answer = await refresher_a.refresh()
        assert (answer.added, answer.removed, answer.problems) == (["tiny-sd2"], [], [])
        assert [name for name, _ in serve.deployed] == ["tiny-sd2"]
        assert serve.deployed[0][1]["ray_actor_options"]["num_gpus"] == 0  # planned as the builder plans
        assert a.catalog.select("tiny-sd2").family.value == "sd2"
        assert a.workers.handles["tiny-sd2"] == f"handle:{APP}--tiny-sd2/tiny-sd2" and "tiny-sd2" in a.queues

        assert "tiny-sd2" not in b.catalog.modes
        await b.ensure_poller()  # its first poll brings the registry's state
        assert b.catalog.select("tiny-sd2").family.value == "sd2" and "tiny-sd2" in b.workers.handles
        later, _ = _router(model_root, registry, serve, modes)  # a router replica that starts now
        await later.ensure_poller()
        assert "tiny-sd2" in later.catalog.modes

        again = await refresher_b.refresh()  # nothing new: nothing deployed twice
        assert (again.added, again.removed) == ([], []) and len(serve.deployed) == 1

        (model_root / "tiny-sd2.safetensors").unlink()
        (model_root / "tiny-sdxl.safetensors").unlink()
        gone = await refresher_b.refresh()
        assert gone.removed == ["tiny-sd2", "tiny-sdxl"]
        assert serve.deleted == [f"{APP}--tiny-sd2"]  # the added one's application goes (Serve drains it)
        assert b.workers.unloaded == ["tiny-sdxl"]  # the configured one is unloaded and no longer served
        await asyncio.sleep(0.3)  # a's next poll
        for router in (a, b, later):
            assert router.catalog.names() == ["tiny-sd1"] and "tiny-sd2" not in router.workers.handles
            assert [(p.path, p.error_type) for p in router.catalog.problems] == [
                ("tiny-sdxl.safetensors", "checkpoint_removed")]

        shutil.copy(demo_models_dir / "tiny-sdxl.safetensors", model_root / "tiny-sdxl.safetensors")
        back = await refresher_a.refresh()  # a configured mode whose file is back is served again
        assert back.added == [] and a.catalog.names() == ["tiny-sd1", "tiny-sdxl"] and a.catalog.problems == []
        for gateway in (a, b, later):
            assert gateway._poller is not None
            gateway._poller.cancel()

    asyncio.run(scenario())


def test_refresh_routes_answer_as_a1111_and_natively(model_root: Path) -> None:
    modes = discover_checkpoints(model_root)[0]
    registry = RegistryClient(InProcessHandle(VramRegistry({})))
    gateway, refresher = _router(model_root, registry, FakeServe(), modes)
    with TestClient(create_http_app(gateway, refresher=refresher)) as client:
        assert client.post("/sdapi/v1/refresh-checkpoints").json() is None
        assert client.post("/v1/modes/refresh").json() == {"discover": True, "added": [], "removed": [],
                                                            "problems": []}
        (model_root / "broken.safetensors").write_bytes(b"\x01")
        problems = client.post("/v1/modes/refresh").json()["problems"]
        assert [(p["path"], p["error_type"]) for p in problems] == [("broken.safetensors", "corrupt_checkpoint")]
    plain, _ = _router(model_root, registry, FakeServe(), modes)
    with TestClient(create_http_app(plain)) as client:  # no discovery: nothing rescanned
        assert client.post("/v1/modes/refresh").json()["discover"] is False


def test_an_operator_state_without_modes_changes_nothing(model_root: Path) -> None:
    modes = discover_checkpoints(model_root)[0]
    gateway, refresher = _router(model_root, RegistryClient(InProcessHandle(VramRegistry({}))), FakeServe(), modes)
    asyncio.run(refresher.sync(OperatorState(default_mode="tiny-sdxl", version=3)))
    assert gateway.catalog.names() == ["tiny-sd1", "tiny-sdxl"]
