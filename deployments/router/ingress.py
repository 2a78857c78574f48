"""The Router: the application's HTTP ingress (FastAPI on Serve). It never touches torch.

`create_http_app(gateway)` builds the FastAPI app: the one error path (request ids, body cap, error
shapes), the front ends (`frontends/`: native + operations, tasks, OpenAI images API, AUTOMATIC1111 sdapi,
the playground page), each an `APIRouter` whose routes get `gateway` as a dependency.

`RouterIngress` is the Serve deployment: constructed in the replica from typed configs passed by keyword,
it builds the catalogs (checkpoint headers, the adapters under the model root) and the `Gateway`, and Serve
serves the app that `__serve_build_asgi_app__` builds (`serve.ingress()` with no app defers it to then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve

import serve_app
from deployments.registry.client import RegistryClient
from deployments.router.frontends import a1111, controlnet, native, openai, playground, tasks
from deployments.router.gateway import Gateway
from deployments.router.http_app import install_error_path
from deployments.router.image_urls import ImageUrls
from deployments.router.mode_client import ModeClient
from deployments.router.mode_refresh import ModeRefresher
from deployments.tasks.client import TaskStoreClient
from serve_app.api.access_policy import AccessPolicy
from serve_app.api.adapter_catalog import AdapterCatalog
from serve_app.api.mode_catalog import ModeCatalog
from serve_app.config.app_args import (
    AccessConfig,
    FairShareConfig,
    HttpLimitsConfig,
    TasksConfig,
    WorkerTimeoutsConfig,
)
from serve_app.config.deployment_plan import ModeLaunch
from serve_app.config.modes_file import ModesFile

DESCRIPTION = ("Stable Diffusion from many checkpoints at once: native API, OpenAI images API, AUTOMATIC1111 "
               "sdapi. Errors are JSON in each API's own shape; every response carries `X-Request-Id`.")


def create_http_app(gateway: Gateway, http: HttpLimitsConfig | None = None,
                    refresher: ModeRefresher | None = None) -> FastAPI:
    """The Router's FastAPI app over `gateway`; `http` bounds request bodies; `refresher` rescans MODEL_ROOT
    (None: refresh-checkpoints changes nothing)."""
    app = FastAPI(title="Dream Lab", version=serve_app.__version__, description=DESCRIPTION)
    app.state.gateway = gateway
    app.state.mode_refresher = refresher
    app.state.image_store = ImageUrls(gateway.task_store)  # OpenAI `response_format: url`
    app.state.a1111_progress = {}  # the A1111 generations running here, for /sdapi/v1/progress
    install_error_path(app, http, policy=lambda: gateway.access)
    for front_end in (native, tasks, openai, a1111, controlnet, playground):
        app.include_router(front_end.router)
    return app


def build_gateway(*, modes: ModesFile, model_root: Path, mode_handles: dict[str, Any], registry: Any = None,
                  access: AccessConfig | None = None, fair_share: FairShareConfig | None = None,
                  task_store: Any = None, tasks: TasksConfig | None = None,
                  timeouts: WorkerTimeoutsConfig | None = None) -> Gateway:
    """The gateway of a router replica: reads the checkpoints' headers and scans the model root's adapters."""
    return Gateway(catalog=ModeCatalog(modes, model_root), adapters=AdapterCatalog(model_root),
                   workers=ModeClient(mode_handles, timeouts),
                   access=AccessPolicy.from_config(access or AccessConfig()), fair_share=fair_share, tasks=tasks,
                   registry=RegistryClient(registry) if registry is not None else None,
                   task_store=TaskStoreClient(task_store, (timeouts or WorkerTimeoutsConfig()).task_store_s)
                   if task_store is not None else None)


@serve.ingress()
class RouterIngress:
    """HTTP ingress. `mode_handles` maps a mode's name to its deployment's handle; `registry` and
    `task_store` are those deployments' handles (None: none)."""

    def __init__(self, *, modes: ModesFile, model_root: str, mode_handles: dict[str, Any], registry: Any = None,
                 access: AccessConfig | None = None, fair_share: FairShareConfig | None = None,
                 task_store: Any = None, tasks: TasksConfig | None = None,
                 http: HttpLimitsConfig | None = None, timeouts: WorkerTimeoutsConfig | None = None,
                 launch: ModeLaunch | None = None) -> None:
        """`launch`: how to deploy the modes a checkpoint refresh finds (None: refresh changes nothing)."""
        self.http = http
        self.gateway = build_gateway(modes=modes, model_root=Path(model_root), mode_handles=mode_handles,
                                     registry=registry, access=access, fair_share=fair_share,
                                     task_store=task_store, tasks=tasks, timeouts=timeouts)
        self.refresher = ModeRefresher(self.gateway, model_root=Path(model_root), launch=launch,
                                       app=serve.get_replica_context().app_name, registry=registry)
        self.gateway.on_state = self.refresher.sync  # added modes reach this router with the registry's state

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_http_app(self.gateway, self.http, self.refresher)
