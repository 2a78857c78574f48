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


def backlog_of(aggregated: dict[str, dict[Any, float]] | None, raw: dict[str, dict[Any, list[Any]]] | None = None
               ) -> float:
    """The mode's backlog now: the latest sample any replica reported (each reports the whole mode's), from
    Serve's raw time series; else the largest of Serve's averages over its look-back window (30 s by default:
    an average would still show a backlog long drained, and a new one only slowly)."""
    samples = [s for series in (raw or {}).get(BACKLOG_METRIC, {}).values() for s in series]
    if samples:
        return float(max(samples, key=lambda s: s.timestamp).value)
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
        waiting = math.floor(backlog_of(ctx.aggregated_metrics, getattr(ctx, "raw_metrics", None)) / target)
        return ctx.total_num_requests / target + waiting, {}
