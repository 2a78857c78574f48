"""Placement (every mode placed by Ray's GPU accounting on a GPU cluster), the autoscaling target check, and
the backlog policy Serve's autoscaler runs for the modes (issue 22). The policy is called with Serve's own
`AutoscalingContext` and `AutoscalingConfig`, wrapped the way Serve's controller wraps a custom policy."""

from __future__ import annotations

from typing import Any

import pytest
from ray.serve._private.autoscaling_state import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from deployments.worker.backlog_policy import BACKLOG_METRIC, BacklogPolicy
from deployments.worker.deployment import check_placement
from serve_app.app_builder import BACKLOG_POLICY
from serve_app.config.app_args import PlacementConfig
from serve_app.config.deployment_plan import gpu_fractions, mode_options
from serve_app.config.modes_file import ModeConfig
from serve_app.core.errors import ConfigError


def _modes(*deployments: dict[str, Any]) -> list[ModeConfig]:
    return [ModeConfig(name=f"m{i}", checkpoint="x.safetensors", deployment=d) for i, d in enumerate(deployments)]


def test_a_mode_without_num_gpus_on_a_gpu_cluster_is_refused_by_name() -> None:
    modes = _modes({"ray_actor_options": {"num_gpus": 0.5}}, {})
    with pytest.raises(ConfigError) as err:
        mode_options(modes, cluster_gpus=1, placement=PlacementConfig())
    assert "mode 'm1' names no num_gpus on a cluster with 1 GPUs" in err.value.message
    assert err.value.param == "modes[1].deployment.ray_actor_options.num_gpus"
    assert mode_options(modes, cluster_gpus=0, placement=PlacementConfig())  # a CPU cluster: no GPU to escape


def test_an_explicit_default_places_the_unplaced_modes() -> None:
    modes = _modes({"ray_actor_options": {"num_gpus": 0.5}}, {})
    on_gpus = mode_options(modes, 1, PlacementConfig(default_num_gpus=0.25))
    assert gpu_fractions(on_gpus) == {"m0": 0.5, "m1": 0.25}
    on_cpu = mode_options(modes, 1, PlacementConfig(default_num_gpus=0))
    assert on_cpu["m1"]["ray_actor_options"]["runtime_env"] == {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}}
    assert on_cpu["m1"]["ray_actor_options"]["num_cpus"] == 0  # Dream Lab's default stays
    assert "runtime_env" not in mode_options(modes, 0, PlacementConfig(default_num_gpus=0))["m1"]["ray_actor_options"]


def test_the_autoscaling_target_must_be_reachable_and_the_backlog_policy_is_named() -> None:
    scaling = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2}}
    (opts,) = mode_options(_modes(scaling), 0, PlacementConfig(), BACKLOG_POLICY).values()
    assert opts["autoscaling_config"]["policy"] == BACKLOG_POLICY and opts["max_ongoing_requests"] == 2
    AutoscalingConfig(**opts["autoscaling_config"])  # Serve takes it (and imports the policy)
    with pytest.raises(ConfigError) as err:  # Serve's default target 2 over a replica's limit of 1
        mode_options(_modes({**scaling, "max_ongoing_requests": 1}), 0, PlacementConfig())
    assert "target_ongoing_requests 2 exceeds max_ongoing_requests 1" in err.value.message
    assert err.value.param == "modes[0].deployment.autoscaling_config.target_ongoing_requests"


def test_a_replica_that_sees_a_gpu_but_holds_none_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="mode 'sdxl' was placed with no num_gpus"):
        check_placement("sdxl", sees_cuda=True, gpu_fraction=0.0, cluster_gpus=2)
    check_placement("sdxl", sees_cuda=True, gpu_fraction=0.5, cluster_gpus=2)
    check_placement("sdxl", sees_cuda=False, gpu_fraction=0.0, cluster_gpus=2)  # hidden GPUs: a CPU mode


def _decide(backlog: float | None, ongoing: float, replicas: int = 1, target: float = 2.0) -> int:
    """Serve's decision for one mode: the policy wrapped as the controller wraps it (scaling factors, delays:
    none here); Serve bounds it by min/max_replicas afterwards (`AutoscalingState.apply_bounds`)."""
    config = AutoscalingConfig(min_replicas=1, max_replicas=2, upscale_delay_s=0, downscale_delay_s=0,
                               target_ongoing_requests=target, policy=BACKLOG_POLICY)
    metrics = {BACKLOG_METRIC: {f"r{i}": backlog for i in range(replicas)}} if backlog is not None else {}
    ctx = AutoscalingContext(
        deployment_id=None, deployment_name="sdxl", app_name="dreamlab",  # type: ignore[arg-type]
        current_num_replicas=replicas, target_num_replicas=replicas, running_replicas=[],
        total_num_requests=ongoing, total_queued_requests=0.0, aggregated_metrics=metrics, raw_metrics={},
        capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=2, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=0.0, config=config)
    decided, _ = _apply_autoscaling_config(BacklogPolicy())(ctx)
    return decided


def test_a_backlog_scales_a_mode_up_where_one_waiting_request_does_not() -> None:
    # one replica busy at its limit (2 ongoing = Serve's default target): Serve alone sees no reason to scale
    assert _decide(backlog=None, ongoing=2) == 1
    assert _decide(backlog=1, ongoing=2) == 1  # one request waiting behind it: not a replica's worth
    assert _decide(backlog=2, ongoing=2) == 2  # a replica's worth at the target
    assert _decide(backlog=16, ongoing=2) == 9  # then max_replicas bounds it
    assert _decide(backlog=64, ongoing=2) == 33
    assert _decide(backlog=64, ongoing=2, target=1.0) == 66  # a mode's own target counts
    # the backlog drained: back to one replica (after the mode's downscale delay, 0 here)
    assert _decide(backlog=0, ongoing=1, replicas=2) == 1


def test_the_policy_alone_answers_what_the_backlog_asks() -> None:
    class Ctx:
        def __init__(self) -> None:
            self.current_num_replicas, self.target_num_replicas = 1, 1
            self.total_num_requests = 2.0
            self.aggregated_metrics = {BACKLOG_METRIC: {"r1": 63.0, "r2": 64.0}}  # each reports the mode's
            self.config = AutoscalingConfig(target_ongoing_requests=2)

    ctx = Ctx()
    assert BacklogPolicy()(ctx) == (1 + 32, {})
    ctx.current_num_replicas = 0  # scaled to zero: Serve's cold-start path wakes it on the queued request
    assert BacklogPolicy()(ctx) == (1, {})


def test_the_latest_backlog_sample_counts_not_the_look_back_average() -> None:
    """Serve averages a custom metric over `look_back_period_s` (30 s by default): a drained backlog would keep
    replicas up and a new one would show slowly. The latest sample of any replica is the mode's backlog now."""
    from ray.serve._private.common import TimeStampedValue

    class Ctx:
        def __init__(self) -> None:
            self.current_num_replicas, self.target_num_replicas = 1, 1
            self.total_num_requests = 2.0
            self.aggregated_metrics = {BACKLOG_METRIC: {"r1": 30.0, "r2": 30.0}}  # the window's average
            self.raw_metrics = {BACKLOG_METRIC: {
                "r1": [TimeStampedValue(1.0, 60.0), TimeStampedValue(2.0, 64.0)],
                "r2": [TimeStampedValue(3.0, 0.0)]}}  # drained: the freshest sample, from another replica
            self.config = AutoscalingConfig(target_ongoing_requests=2)

    ctx = Ctx()
    assert BacklogPolicy()(ctx) == (1, {})
    ctx.raw_metrics[BACKLOG_METRIC]["r2"] = [TimeStampedValue(1.5, 10.0)]  # r1's 64 at t=2 is the latest
    assert BacklogPolicy()(ctx) == (1 + 32, {})
    ctx.raw_metrics = {}  # no series (older Serve): the averages
    assert BacklogPolicy()(ctx) == (1 + 15, {})

