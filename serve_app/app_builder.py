"""The Serve application builder: `import_path: serve_app.app_builder:build_app` in a Serve config.

It reads the modes, makes the demo checkpoints when asked and missing, and binds one `VramRegistry`,
one mode deployment per mode (named after the mode, so a Serve config's `deployments:` entries override
its options the Serve way) and the `Router` ingress.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from serve_app.errors import ConfigError
from serve_app.modes_config import model_root_from_env, modes_from_environment
from serve_app.strict_model import StrictModel, error_field
from deployments.vram_registry import RegistryConfig

logger = logging.getLogger(__name__)

# Defaults for every mode deployment; the Serve config's `deployments:` list overrides them per mode.
MODE_DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 2,
    "max_queued_requests": 64,
    "graceful_shutdown_timeout_s": 300,
    "graceful_shutdown_wait_loop_s": 1,
    "health_check_period_s": 10,
    "ray_actor_options": {"num_cpus": 0},
}


class AppArgs(StrictModel):
    """The `args` of the application in a Serve config."""

    modes_file: str | None = Field(None, description="Modes YAML; without it, MODEL or discovery (see README).")
    model_root: str | None = Field(None, description="Where checkpoints live; default: $MODEL_ROOT or ./models.")
    demo_models: bool = Field(False, description="Write the tiny demo checkpoints into model_root when missing.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="VRAM registry settings.")


def parse_app_args(args: dict[str, Any] | None) -> AppArgs:
    try:
        return AppArgs.model_validate(args or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        field, value = error_field(err)
        raise ConfigError(f"application args: {field}: {err['msg']} (value: {value!r})", param=field) from exc


def build_app(args: dict[str, Any] | None = None):
    """Build the Dream Lab application from its Serve-config `args`."""
    from ray import serve

    from deployments.mode_worker import ModeWorker
    from deployments.router import RouterIngress
    from deployments.vram_registry import VramRegistry

    a = parse_app_args(args)
    root = Path(a.model_root).expanduser() if a.model_root else model_root_from_env()
    root = root.resolve()
    if a.demo_models:
        from serve_app.demo_models import demo_models_present, write_demo_models

        if not demo_models_present(root):
            logger.warning("writing the tiny demo checkpoints to %s", root)
            write_demo_models(root)
    modes, root = modes_from_environment(a.modes_file, root)
    registry_cfg = a.registry.model_dump()
    registry = serve.deployment(VramRegistry, name="VramRegistry").options(
        num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": False}).bind(registry_cfg)  # heartbeats would flood the log
    handles = {}
    for mode in modes.modes:
        options = {**MODE_DEPLOYMENT_DEFAULTS, **mode.deployment.model_dump(exclude_none=True)}
        if "autoscaling_config" in options:
            options.pop("num_replicas", None)
        handles[mode.name] = serve.deployment(ModeWorker, name=mode.name).options(**options).bind(
            mode.model_dump(mode="json"), str(root), registry, registry_cfg, modes.allow_absolute_paths)
    return serve.deployment(RouterIngress, name="Router").options(
        max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}).bind(
        modes.model_dump(mode="json"), str(root), handles, registry, registry_cfg)
