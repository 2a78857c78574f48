"""Serve autoscaling on a mode's backlog (Ray Serve's custom autoscaling policy API).

The router holds a mode's waiting requests in its fair queue and sends on only what the live replicas can
run (`max_ongoing_requests` each), so Serve's own count (`total_num_requests`: running + queued at the
handles) never sees the backlog: 64 waiting requests and 1 look the same to its default policy. The routers
report their waiting requests per mode to the registry with their polls; each mode replica learns its mode's
total in its heartbeat answer and reports it to Serve as the custom metric `dreamlab_backlog`
(`record_autoscaling_stats`); this policy adds it:

    desired replicas = total_num_requests / target + floor(backlog / target)

so each `target_ongoing_requests` waiting requests (a replica's worth at the target) add one replica, and a
lone waiting request behind a busy replica does not. Serve then applies the mode's `min_replicas` /
`max_replicas`, `upscale_delay_s` / `downscale_delay_s` and scaling factors as for its default policy. A
mode at zero replicas wakes on Serve's own cold-start path: the router always lets one request of a
scaled-to-zero mode through to its handle.
"""

from __future__ import annotations

import math
from typing import Any

BACKLOG_METRIC = "dreamlab_backlog"


def backlog_of(aggregated: dict[str, dict[Any, float]] | None) -> float:
    """The mode's backlog: every replica reports the whole mode's, so the largest (freshest) counts."""
    per_replica = (aggregated or {}).get(BACKLOG_METRIC, {})
    return max(per_replica.values(), default=0.0)


class BacklogPolicy:
    """Serve's `autoscaling_config.policy.policy_function`: a class, built once per deployment by Serve."""

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        """`ctx`: Serve's `AutoscalingContext`; answers the desired replica count (bounds and delays are
        applied by Serve) and the policy state (none)."""
        if ctx.current_num_replicas == 0:
            return ctx.target_num_replicas, {}
        target = ctx.config.get_target_ongoing_requests()
        waiting = math.floor(backlog_of(ctx.aggregated_metrics) / target)
        return ctx.total_num_requests / target + waiting, {}
