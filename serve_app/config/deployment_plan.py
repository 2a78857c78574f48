"""The mode deployments' Serve options as the builder binds them, checked against the cluster:

- **Placement**: on a cluster with GPUs every mode names its `num_gpus` (in its modes-file `deployment:`
  block), or `placement.default_num_gpus` gives it one; a mode with neither is a configuration error that
  names it (such a replica escapes Ray's GPU accounting yet still sees the GPUs and lands on `cuda:0`). A
  mode with `num_gpus: 0` on such a cluster runs on the CPU: its GPUs are hidden (`CUDA_VISIBLE_DEVICES=""`).
- **Autoscaling**: a mode's `target_ongoing_requests` (Serve's default 2) may not exceed its
  `max_ongoing_requests` (a replica never holds more at once, so Serve could never see the target reached);
  the backlog in the routers' fair queues is added by the backlog policy the builder names (see
  `deployments.worker.backlog_policy`).

A Serve config's `deployments:` entries still override these options the Serve way after the build; the
builder never sees them, so a mode replica checks its own placement again when it starts.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import Field

from serve_app.config.app_args import PlacementConfig, RegistryConfig
from serve_app.config.modes_file import ModeConfig
from serve_app.core.errors import ConfigError
from serve_app.core.strict_model import StrictModel

SERVE_DEFAULT_TARGET_ONGOING_REQUESTS = 2.0  # ray.serve's own default


def mode_options(modes: list[ModeConfig], cluster_gpus: float, placement: PlacementConfig,
                 policy: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Each mode's deployment options, placed and checked; `policy` (an autoscaling policy) goes into every
    `autoscaling_config` that names none. Raises `ConfigError` naming the mode and the field."""
    planned = {}
    for i, mode in enumerate(modes):
        options = copy.deepcopy(mode.deployment_options())
        actor = options.setdefault("ray_actor_options", {})
        field = f"modes[{i}].deployment.ray_actor_options.num_gpus"
        if actor.get("num_gpus") is None:
            if placement.default_num_gpus is not None:
                actor["num_gpus"] = placement.default_num_gpus
            elif cluster_gpus > 0:
                raise ConfigError(
                    f"mode {mode.name!r} names no num_gpus on a cluster with {cluster_gpus:g} GPUs: give it "
                    f"`deployment: {{ray_actor_options: {{num_gpus: <fraction of a GPU>}}}}` in the modes file "
                    "(0 runs it on the CPU), or set the application arg placement.default_num_gpus", param=field)
        if actor.get("num_gpus") == 0 and cluster_gpus > 0:
            env = actor.setdefault("runtime_env", {}).setdefault("env_vars", {})
            env.setdefault("CUDA_VISIBLE_DEVICES", "")  # Ray leaves the GPUs visible to a replica given none
        scaling = options.get("autoscaling_config")
        if scaling is not None:
            target = float(scaling.get("target_ongoing_requests") or SERVE_DEFAULT_TARGET_ONGOING_REQUESTS)
            if target > options["max_ongoing_requests"]:
                raise ConfigError(
                    f"mode {mode.name!r}: autoscaling target_ongoing_requests {target:g} exceeds "
                    f"max_ongoing_requests {options['max_ongoing_requests']}: a replica never runs more than "
                    "that at once, so the target would never be reached", param=f"modes[{i}].deployment."
                    "autoscaling_config.target_ongoing_requests")
            if policy is not None and "policy" not in scaling:
                scaling["policy"] = dict(policy)
        planned[mode.name] = options
    return planned


def gpu_fractions(options: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each mode's `num_gpus` as planned (0 for none)."""
    return {name: float(o.get("ray_actor_options", {}).get("num_gpus") or 0.0) for name, o in options.items()}


class ModeLaunch(StrictModel):
    """What a router needs to deploy a mode that a checkpoint refresh found, the way the builder deploys the
    configured ones (the same options plan, the same registry)."""

    discover: bool = Field(description="The modes come (also) from discovery: refresh-checkpoints may add modes.")
    placement: PlacementConfig = Field(default_factory=PlacementConfig, description="The application's placement.")
    cluster_gpus: float = Field(0.0, ge=0, description="GPUs of the cluster at build time.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="The registry settings.")
    allow_absolute_paths: bool = Field(False, description="As the modes file says.")
