"""The Serve application builder: `import_path: serve_app.app_builder:build_app` in a Serve config.

It reads the modes, makes the demo checkpoints when asked and missing, and binds one `VramRegistry`,
one mode deployment per mode (named after the mode, so a Serve config's `deployments:` entries override
its options the Serve way), one `TaskStore` and the `RouterIngress`, each given its typed configs by keyword.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deployments.worker.mode_apps import BACKLOG_POLICY, bind_mode
from serve_app.config.app_args import (
    REGISTRY_DEPLOYMENT,
    ROUTER_DEPLOYMENT,
    TASKS_DEPLOYMENT,
    parse_app_args,
)
from serve_app.config.deployment_plan import ModeLaunch, gpu_fractions, mode_options
from serve_app.config.modes_file import discovers, model_root_from_env, modes_from_environment

logger = logging.getLogger(__name__)
__all__ = ["BACKLOG_POLICY", "build_app", "cluster_gpus"]


def cluster_gpus() -> float:
    """GPUs of the Ray cluster the application is built on (0 outside Ray or without GPUs)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0


def build_app(args: dict[str, Any] | None = None):
    """Build the Dream Lab application from its Serve-config `args`."""
    from ray import serve

    from deployments.registry.vram_registry import VramRegistry
    from deployments.router.ingress import RouterIngress
    from deployments.tasks.store import TaskStore, state_root

    a = parse_app_args(args)
    root = Path(a.model_root).expanduser() if a.model_root else model_root_from_env()
    root = root.resolve()
    if a.demo_models:
        from serve_app.model.demo.demo_adapters import write_demo_adapters
        from serve_app.model.demo.demo_models import demo_models_present, write_demo_models

        if not demo_models_present(root):
            logger.warning("writing the tiny demo checkpoints to %s", root)
            write_demo_models(root)
        write_demo_adapters(root)  # cheap when present; a models folder from an older version lacks them
    modes, root = modes_from_environment(a.modes_file, root)
    gpus = cluster_gpus()
    options = mode_options(modes.modes, gpus, a.placement, BACKLOG_POLICY)
    registry_cfg = a.registry.model_dump()
    registry = serve.deployment(name=REGISTRY_DEPLOYMENT)(VramRegistry).options(
        num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": False}).bind(  # heartbeats would flood the log
        registry_cfg, placement=gpu_fractions(options))
    handles = {mode.name: bind_mode(mode, options[mode.name], str(root), registry, registry_cfg,
                                    modes.allow_absolute_paths) for mode in modes.modes}
    launch = ModeLaunch(discover=discovers(a.modes_file), placement=a.placement, cluster_gpus=gpus,
                        registry=a.registry, allow_absolute_paths=modes.allow_absolute_paths)
    tasks = serve.deployment(name=TASKS_DEPLOYMENT)(TaskStore).options(
        num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": False}).bind(a.tasks, handles, str(state_root(a.tasks, root)))
    return serve.deployment(name=ROUTER_DEPLOYMENT)(RouterIngress).options(
        max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}).bind(
        modes=modes, model_root=str(root), mode_handles=handles, registry=registry, access=a.access,
        fair_share=a.fair_share, task_store=tasks, tasks=a.tasks, http=a.http,
        timeouts=a.timeouts, launch=launch)
