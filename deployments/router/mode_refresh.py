"""Checkpoint refresh: MODEL_ROOT rescanned at run time, new checkpoints served and removed ones gone, with no
restart (`POST /sdapi/v1/refresh-checkpoints`, `POST /v1/modes/refresh`).

The refreshing router rescans off the event loop (`discover_checkpoints`), plans the change
(`serve_app.api.mode_changes`) and records it in the registry's operator state (`change_modes`: the registry
answers which added modes are really new, so two refreshes at once deploy each mode once). Then it deploys
each new mode as its own Serve application (`deployments.worker.mode_apps`, from a Ray task), deletes the
applications of added modes whose checkpoint went (Serve drains their replicas) and of modes the state no
longer names, and unloads configured modes whose checkpoint went.

Every router replica applies the operator state it polls from the registry (`sync`): an added mode gets
its checkpoint inspected, a handle and a fair queue and joins the catalog; a mode the state drops or
removes leaves it. A router that starts later learns the same from its first poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from deployments.protocol import AddedMode, OperatorState
from deployments.router.gateway import Gateway, off_loop
from deployments.worker import mode_apps
from serve_app.api.mode_catalog import ServedMode
from serve_app.api.mode_changes import AddedCheckpoint, plan_refresh
from serve_app.api.schemas.native import ModesRefreshResponse
from serve_app.config.deployment_plan import ModeLaunch, mode_options
from serve_app.config.modes_file import ModeConfig, discover_checkpoints
from serve_app.core.errors import DreamLabError
from serve_app.model.inspection.checkpoint_problems import CheckpointProblem

logger = logging.getLogger(__name__)

Deploy = Callable[..., Awaitable[list[str]]]


class ModeRefresher:
    """One router replica's part. `app` is the Serve application of the router; `registry` the registry's
    handle (passed to the mode deployments it deploys). `deploy`, `delete`, `apps` and `handle` reach Serve
    (a unit test passes fakes)."""

    def __init__(self, gateway: Gateway, *, model_root: Path, launch: ModeLaunch | None, app: str,
                 registry: Any = None, deploy: Deploy = mode_apps.deploy_remotely,
                 delete: Callable[[list[str]], None] = mode_apps.delete_mode_apps,
                 apps: Callable[[str], list[str]] = mode_apps.added_apps_of,
                 handle: Callable[[str, str], Any] = mode_apps.mode_handle) -> None:
        self.gateway = gateway
        self.model_root = model_root
        self.launch = launch
        self.app = app
        self.registry = registry
        self._deploy, self._delete, self._apps, self._handle = deploy, delete, apps, handle
        self.added: dict[str, ServedMode] = {}  # the added modes this router serves
        self._applied: tuple[list[AddedMode], list[str]] = ([], [])
        self._refreshing = asyncio.Lock()
        self._syncing = asyncio.Lock()

    @property
    def discovers(self) -> bool:
        return self.launch is not None and self.launch.discover

    # -- every router: apply the registry's state ---------------------------------------------------------
    async def sync(self, state: OperatorState) -> None:
        """Make this router's catalog, handles and queues what `state` says (cheap when nothing changed)."""
        if (state.added_modes, state.removed_modes) == self._applied:
            return
        async with self._syncing:
            if (state.added_modes, state.removed_modes) == self._applied:
                return
            gw, allow = self.gateway, self.launch.allow_absolute_paths if self.launch else False
            for added in state.added_modes:
                if added.name in self.added or added.name in gw.catalog.configured:
                    continue
                config = ModeConfig(name=added.name, checkpoint=added.checkpoint)
                try:
                    served = await off_loop(gw.catalog.inspect, config, self.model_root, allow)
                    gw.workers.handles[added.name] = await asyncio.to_thread(self._handle, added.name, added.app)
                except Exception as exc:  # a file gone again, a controller that does not answer: the next refresh
                    logger.warning("added mode %s is not served here: %s", added.name, exc)
                    continue
                gw.add_queue(served)
                self.added[added.name] = served
            named = {m.name for m in state.added_modes}
            for name in [n for n in self.added if n not in named]:
                del self.added[name]
                gw.workers.handles.pop(name, None)  # calls under way hold it already; its queue stays
            gw.catalog.set_runtime(self.added, state.removed_modes)
            self._applied = (state.added_modes, state.removed_modes)

    # -- the refreshing router ----------------------------------------------------------------------------
    async def refresh(self) -> ModesRefreshResponse:
        """Rescan MODEL_ROOT and change the served modes; answers what changed."""
        if not self.discovers:
            return ModesRefreshResponse(discover=False)
        async with self._refreshing:
            gw = self.gateway
            await gw.refuse_if_draining()
            before = gw.operator
            found, problems = await off_loop(discover_checkpoints, self.model_root)
            plan = plan_refresh(gw.catalog.configured_configs(),
                                [AddedCheckpoint(m.name, m.checkpoint) for m in before.added_modes],
                                found, problems, self.model_root)
            options, refused = self._options(plan.add)
            add = [AddedMode(name=m.name, checkpoint=m.checkpoint, app=mode_apps.mode_app_name(self.app, m.name))
                   for m in plan.add if m.name in options]
            state, accepted = await self._record(add, plan.drop, plan.removed)
            if accepted:
                try:
                    await self._deploy(self.app, [m.model_dump(mode="json", exclude_unset=True)
                                                  for m in plan.add if m.name in accepted],
                                       options, str(self.model_root), self.registry,
                                       self.launch.registry.model_dump() if self.launch else {},
                                       self.launch.allow_absolute_paths if self.launch else False)
                except Exception as exc:
                    logger.warning("deploying the added modes %s failed: %s", accepted, exc)
                    refused += [CheckpointProblem(path=m.checkpoint, error_type="deploy_failed",
                                                  message=f"mode {m.name!r} could not be deployed: {exc}"[:500])
                                for m in add if m.name in accepted]
                    state, _ = await self._record([], accepted, plan.removed)
                    accepted = []
            state, _ = await self._record([], [], plan.removed)  # the newest: a mode another router added counts
            await self._delete_unnamed(state)
            await self.sync(state)
            newly_removed = [n for n in plan.removed if n not in before.removed_modes]
            for name in newly_removed:  # its replicas drop the model; a request can no longer reach it
                with contextlib.suppress(DreamLabError):
                    await gw.workers.unload(name)
            dropped = [n for n in plan.drop if any(m.name == n for m in before.added_modes)]
            return ModesRefreshResponse(discover=True, added=accepted, removed=[*dropped, *newly_removed],
                                        problems=[*plan.problems, *refused])

    def _options(self, modes: list[ModeConfig]) -> tuple[dict[str, dict[str, Any]], list[CheckpointProblem]]:
        """Each new mode's deployment options as the builder plans them; one that cannot be placed is a problem."""
        assert self.launch is not None
        options, refused = {}, []
        for mode in modes:
            try:
                options.update(mode_options([mode], self.launch.cluster_gpus, self.launch.placement,
                                            mode_apps.BACKLOG_POLICY))
            except DreamLabError as exc:
                refused.append(CheckpointProblem(path=mode.checkpoint, error_type="placement_error",
                                                 message=exc.message))
        return options, refused

    async def _record(self, add: list[AddedMode], drop: list[str],
                      removed: list[str]) -> tuple[OperatorState, list[str]]:
        """The change, into the registry's operator state (this router's copy follows)."""
        gw = self.gateway
        if gw.registry is None:
            raise DreamLabError("refresh-checkpoints needs the registry")
        state, accepted = await gw.registry.change_modes(add, drop, removed)
        if state.version > gw.operator.version:
            gw.operator = state
        return gw.operator, accepted

    async def _delete_unnamed(self, state: OperatorState) -> None:
        """Delete the applications of added modes that `state` no longer names (dropped now, or left behind by
        an earlier run of the application)."""
        named = {m.app for m in state.added_modes}
        try:
            stale = [a for a in await asyncio.to_thread(self._apps, self.app) if a not in named]
            if stale:
                await asyncio.to_thread(self._delete, stale)
        except Exception as exc:
            logger.warning("deleting the applications of removed modes failed: %s", exc)


def mode_refresher(request: Request) -> ModeRefresher | None:
    """The router's refresher (`RouterIngress` sets one; None: refresh is not offered)."""
    refresher: ModeRefresher | None = getattr(request.app.state, "mode_refresher", None)
    return refresher


RefresherDep = Annotated[ModeRefresher | None, Depends(mode_refresher)]
