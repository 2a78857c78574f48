"""Mode deployments as Serve binds them, and the modes a checkpoint refresh adds to a running application.

`bind_mode` is the one way a mode deployment is bound: the builder binds the configured modes with it, and a
refresh binds each checkpoint it finds the same way (the same options plan, the registry's handle).

A mode added at run time cannot join the running application: re-applying the application with one more
deployment changes its code version and restarts every replica (every model reloads). So each added mode is
its own small Serve application, `<app>--<mode>` (`mode_app_name`), with no HTTP route, holding one mode
deployment named after the mode; the routers call it through `serve.get_deployment_handle(mode, app)`.
Deleting that application drains its replicas (their graceful shutdown) and stops them.

`deploy_mode_apps` runs as a Ray task (`deploy_remotely`): binding the worker class imports torch, which
the router process never does.
"""

from __future__ import annotations

import logging
from typing import Any

from serve_app.config.app_args import REGISTRY_DEPLOYMENT
from serve_app.config.modes_file import ModeConfig

logger = logging.getLogger(__name__)

# Modes that autoscale count the requests waiting in the routers' fair queues (see the README's autoscaling).
BACKLOG_POLICY = {"policy_function": "deployments.worker.backlog_policy:BacklogPolicy"}
ADDED_APP_SEPARATOR = "--"


def mode_app_name(app: str, mode: str) -> str:
    """The Serve application of a mode that a refresh added to application `app`."""
    return f"{app}{ADDED_APP_SEPARATOR}{mode}"


def bind_mode(mode: ModeConfig, options: dict[str, Any], model_root: str, registry: Any,
              registry_cfg: dict[str, Any], allow_absolute: bool) -> Any:
    """The mode deployment of `mode` (named after it), bound with its planned `options`."""
    from ray import serve

    from deployments.worker.deployment import ModeWorkerDeployment

    return serve.deployment(name=mode.name)(ModeWorkerDeployment).options(**options).bind(
        mode.model_dump(mode="json", exclude_unset=True),  # unset defaults take the family's on the worker
        model_root, registry, registry_cfg, allow_absolute)


def deploy_mode_apps(app: str, modes: list[dict[str, Any]], options: dict[str, dict[str, Any]], model_root: str,
                     registry: Any, registry_cfg: dict[str, Any], allow_absolute: bool) -> list[str]:
    """Deploy each of `modes` (ModeConfig dumps) as its own application of `app`, without waiting for its
    replicas (they load on their own); answers the application names."""
    from ray import serve

    names = []
    for data in modes:
        mode = ModeConfig.model_validate(data)
        name = mode_app_name(app, mode.name)
        serve._run(bind_mode(mode, options[mode.name], model_root, registry, registry_cfg, allow_absolute),
                   name=name, route_prefix=None, _blocking=False)
        logger.warning("mode %s added as Serve application %s", mode.name, name)
        names.append(name)
    return names


async def deploy_remotely(*args: Any) -> list[str]:
    """`deploy_mode_apps(*args)` in a Ray task (no CPU booked: it only talks to the Serve controller)."""
    import ray

    names: list[str] = await ray.remote(num_cpus=0, max_retries=0)(deploy_mode_apps).remote(*args)
    return names


def delete_mode_apps(names: list[str]) -> None:
    """Delete added modes' applications without waiting: Serve drains their replicas, then stops them."""
    from ray import serve

    for name in names:
        serve.delete(name, _blocking=False)
        logger.warning("Serve application %s deleted (its replicas drain)", name)


def added_apps_of(app: str) -> list[str]:
    """The running applications that hold modes added to `app`."""
    from ray import serve

    prefix = mode_app_name(app, "")
    return [name for name, status in serve.status().applications.items()  # never a whole Dream Lab app
            if name.startswith(prefix) and REGISTRY_DEPLOYMENT not in status.deployments]


def mode_handle(mode: str, app: str, check_exists: bool = False) -> Any:
    """The handle of an added mode's deployment (blocking: it may ask the Serve controller)."""
    from ray import serve

    return serve.get_deployment_handle(mode, app_name=app, _check_exists=check_exists)
