"""Dream Lab's metrics, through Ray's own metrics API (`ray.util.metrics`): exported on every node's Ray
Prometheus endpoint (names prefixed `ray_`) and shown in the Ray dashboard's metrics view.

- Router: requests by mode, route and status; seconds per stage (queue, load, inference, encode, total);
  queue depth per mode.
- Mode workers: loads by mode and source tier, load seconds; moves off the device by mode, target tier and
  reason (evictions, operator unloads).
- Registry: VRAM bytes per device by ledger line (used = the models, context, cache, unaccounted, reserved,
  free; total, budget, accounted, and driver_used as the driver reports it) and models per device and tier.

Instruments are created on first use in the process that records them; outside Ray (unit tests of the
plain classes) recording does nothing.
"""

from __future__ import annotations

import functools
import time
from typing import Any

SECONDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
STAGES = ("queue", "load", "inference", "encode", "total")
VRAM_KINDS = ("total", "budget", "used", "context", "cache", "unaccounted", "accounted", "reserved", "free")


@functools.cache
def _instruments() -> dict[str, Any] | None:
    import ray

    if not ray.is_initialized():
        return None
    from ray.util.metrics import Counter, Gauge, Histogram

    return {
        "requests": Counter("dreamlab_requests", "HTTP requests answered, by mode, route and status.",
                            tag_keys=("mode", "route", "status")),
        "stage": Histogram("dreamlab_request_stage_seconds", "Seconds a generation spent per stage.",
                           boundaries=SECONDS, tag_keys=("mode", "stage")),
        "queue": Gauge("dreamlab_queue_depth", "Requests waiting in the router's queue of a mode.",
                       tag_keys=("mode",)),
        "loads": Counter("dreamlab_model_loads", "Model loads, by mode and the tier they came from.",
                         tag_keys=("mode", "tier")),
        "load_s": Histogram("dreamlab_model_load_seconds", "Seconds of a model load (reserve to register).",
                            boundaries=SECONDS, tag_keys=("mode", "tier")),
        "moves": Counter("dreamlab_model_moves", "Models moved off their device, by mode, target tier and reason.",
                         tag_keys=("mode", "to", "reason")),
        "vram": Gauge("dreamlab_vram_bytes", "Device memory by kind: total, budget, used (models), context, cache, "
                      "unaccounted, accounted, reserved, free, driver_used.",
                      tag_keys=("device", "kind")),
        "models": Gauge("dreamlab_models", "Models per device, by tier.", tag_keys=("device", "tier")),
    }


def _get(name: str) -> Any | None:
    instruments = _instruments()
    return None if instruments is None else instruments[name]


def request_answered(mode: str, route: str, status: int) -> None:
    if (m := _get("requests")) is not None:
        m.inc(tags={"mode": mode or "-", "route": route, "status": str(status)})


def stage_seconds(mode: str, seconds: dict[str, float | None]) -> None:
    """Observe the stages of one generation (a None stage did not happen)."""
    if (m := _get("stage")) is not None:
        for stage, value in seconds.items():
            if value is not None:
                m.observe(value, tags={"mode": mode, "stage": stage})


def queue_depth(mode: str, waiting: int) -> None:
    if (m := _get("queue")) is not None:
        m.set(waiting, tags={"mode": mode})


def model_loaded(mode: str, tier: str, seconds: float) -> None:
    if (m := _get("loads")) is not None:
        m.inc(tags={"mode": mode, "tier": tier})
        if (h := _get("load_s")) is not None:
            h.observe(seconds, tags={"mode": mode, "tier": tier})


def model_moved(mode: str, to: str, reason: str) -> None:
    if (m := _get("moves")) is not None:
        m.inc(tags={"mode": mode, "to": to, "reason": reason})


class RegistryExport:
    """Sets the registry's gauges from its stats, at most once per `period_s` (they are read every scrape)."""

    def __init__(self, period_s: float = 1.0) -> None:
        self.period_s = period_s
        self._last = 0.0
        self._devices: set[str] = set()

    def due(self) -> bool:
        return _instruments() is not None and time.monotonic() - self._last >= self.period_s

    def export(self, stats: Any) -> None:
        """`stats`: a `RegistryStats`; devices gone since the last export are zeroed."""
        self._last = time.monotonic()
        vram, models = _get("vram"), _get("models")
        if vram is None or models is None:
            return
        seen = set()
        for dev in stats.devices:
            seen.add(dev.device)
            for kind in VRAM_KINDS:
                vram.set(getattr(dev, f"{kind}_bytes") or 0, tags={"device": dev.device, "kind": kind})
            vram.set(dev.reported_used_bytes or 0, tags={"device": dev.device, "kind": "driver_used"})
            models.set(len(dev.models), tags={"device": dev.device, "tier": "vram"})
        for node in stats.nodes:
            models.set(len(node.models), tags={"device": f"{node.node}:ram", "tier": "ram"})
        for gone in self._devices - seen:
            models.set(0, tags={"device": gone, "tier": "vram"})
        self._devices = seen
