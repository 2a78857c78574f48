"""The summary `bench_gpu.py` prints: per mode, the served and in-process measurements against their references
(raw read, copy bound, driver's view, `estimate_vram`) and targets, with the formatting helpers.
"""

from __future__ import annotations

import argparse
import statistics
from typing import TYPE_CHECKING, Any

from gpu_checkpoints import MODES, GiB

if TYPE_CHECKING:
    from bench_gpu import Served
    from gpu_in_process import InProcess

SWITCH_TARGET = 2.0  # RAM-tier switch <= 2x the host->device copy bound
ACCOUNTING_TARGET_PCT = 5.0


def fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}s"


def fmt_gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / GiB:.3f} GiB"


def pct(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "n/a"
    return f"{(value - reference) / reference * 100:+.1f}%"


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "n/a"
    return f"{value / reference:.2f}x"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def per_replica(device: dict[str, Any], key: str) -> str:
    return ", ".join(f"{line['mode']} {fmt_gib(line[key])}" for line in device.get("lines", [])) or "none"


def ledger_table(devices: list[dict[str, Any]]) -> None:
    """The registry's lines of each device after the mixed workload, their sum against the driver's used."""
    for dev in devices:
        driver = dev.get("reported_used_bytes")
        print(f"\n-- ledger vs driver after the mixed workload: {dev['device']}"
              f"{' (simulated: no driver view)' if dev.get('simulated') else ''}")
        models = ", ".join(f"{m['mode']} {fmt_gib(m['footprint_bytes'])}" for m in dev["models"]) or "none"
        rows = [("models (used)", dev["used_bytes"], models),
                ("CUDA contexts", dev["context_bytes"], f"per replica: {per_replica(dev, 'context_bytes')}"),
                ("allocator caches", dev["cache_bytes"], f"per replica: {per_replica(dev, 'cache_bytes')}"),
                ("unaccounted", dev["unaccounted_bytes"], "other processes on the card"),
                ("= accounted", dev["accounted_bytes"], "the ledger's view"),
                ("driver used", driver, f"accounted vs driver: {pct(dev['accounted_bytes'], driver)}"),
                ("reserved", dev["reserved_bytes"], "loads under way, large requests' extra working memory"),
                ("free", dev["free_bytes"], f"of a budget of {fmt_gib(dev['budget_bytes'])} (total "
                 f"{fmt_gib(dev['total_bytes'])}): budget - max(accounted + reserved, driver used)")]
        for name, value, note in rows:
            print(f"  {name:<17} {fmt_gib(value):>12}  {note}")


def report(args: argparse.Namespace, served: dict[str, Served], local: dict[str, InProcess],
           bandwidth: tuple[float, float, float] | None, ledger: list[dict[str, Any]]) -> None:
    h2d, d2h = (bandwidth[0], bandwidth[2]) if bandwidth else (None, None)
    print("\n== summary ==")
    if bandwidth:
        print(f"host->device: pinned {bandwidth[0] / 1e9:.1f} GB/s, pageable {bandwidth[1] / 1e9:.1f} GB/s; "
              f"device->host pinned {bandwidth[2] / 1e9:.1f} GB/s")
    else:
        print("no CUDA: copy bounds, the driver's view and peak memory are n/a")
    for mode in MODES:
        s, p = served[mode.name], local[mode.name]
        other = next(m.name for m in MODES if m is not mode)
        bound = p.param_bytes / h2d if h2d else None
        switch_bound = bound + local[other].param_bytes / d2h if bound is not None and d2h else None
        ram, restore = median(s.ram_loads), median(p.restores)
        ram_ok = None if ram is None or bound is None else ram <= SWITCH_TARGET * bound
        acc_ok = None
        if s.driver_delta_bytes:
            acc_ok = abs(s.device_used_bytes - s.driver_delta_bytes) / s.driver_delta_bytes * 100 \
                <= ACCOUNTING_TARGET_PCT
        size = args.size or mode.size
        print(f"\n-- {mode.name} ({mode.family}): {p.param_bytes / 1e9:.3f} GB of parameters and buffers at "
              f"{args.dtype}")
        print(f"  load from disk, served (first request)  {fmt_s(s.disk_load_s)} (tier {s.disk_tier}): "
              f"{ratio(s.disk_load_s, s.raw_read_s)} the raw read ({s.raw_read_bytes / 1e9:.2f} GB in "
              f"{s.raw_read_s:.3f}s, {args.page_cache} page cache), {ratio(s.disk_load_s, bound)} the copy bound; "
              "it includes the replica's first-time imports" + (f" and evicting {other}" if mode is MODES[1] else ""))
        print(f"  load from disk, served, repeated        {fmt_s(s.repeat_load_s)} (tier {s.repeat_tier}; operator "
              f"unload + load on an empty device): {ratio(s.repeat_load_s, s.raw_read_s)} the raw read")
        print(f"  load from disk, in-process              {fmt_s(p.load_s)}: {ratio(p.load_s, s.raw_read_s)} the "
              "raw read")
        print(f"  copy bound (bytes / pinned H2D)         {fmt_s(bound)}")
        print(f"  RAM-tier switch, served (median of {len(s.ram_loads)})  {fmt_s(ram)}: {ratio(ram, bound)} the "
              f"bound (target <= {SWITCH_TARGET:.0f}x) {verdict(ram_ok)}; it includes evicting {other} "
              f"(bound with its device->host copy {fmt_s(switch_bound)}: {ratio(ram, switch_bound)}); client "
              f"latency {fmt_s(median(s.switch_client_s))}")
        print(f"  RAM-tier restore alone, in-process      {fmt_s(restore)}: {ratio(restore, bound)} the bound")
        if s.other_tiers:
            print(f"  switches not served from the RAM tier: {s.other_tiers}")
        print(f"  registry measured_bytes {fmt_gib(s.measured_bytes)}: {pct(s.measured_bytes, p.param_bytes)} vs "
              f"the parameter bytes, {pct(s.measured_bytes, p.allocated_delta or None)} vs an in-process load's "
              f"allocation ({fmt_gib(p.allocated_delta or None)})")
        print(f"  registry device used_bytes {fmt_gib(s.device_used_bytes)} (footprint {fmt_gib(s.footprint_bytes)}"
              f" = measured + standing working memory; load estimate {fmt_gib(s.estimate_bytes)}) vs the driver's "
              f"view after the largest request {fmt_gib(s.driver_delta_bytes)} (reported_used - baseline): "
              f"{pct(s.device_used_bytes, s.driver_delta_bytes)} (target within {ACCOUNTING_TARGET_PCT:.0f}%) "
              f"{verdict(acc_ok)}; {s.snapshot}")
        est = p.estimate
        if p.peak_error:
            print(f"  largest request ({p.peak_request}): {p.peak_error}; estimate {fmt_gib(est.total_bytes)}")
        else:
            working = None if p.peak_allocated is None or p.peak_base is None else p.peak_allocated - p.peak_base
            print(f"  largest request ({p.peak_request}): peak allocated {fmt_gib(p.peak_allocated)} (reserved "
                  f"{fmt_gib(p.peak_reserved)}); estimate {fmt_gib(est.total_bytes)}: "
                  f"{pct(est.total_bytes, p.peak_allocated)}; working memory {fmt_gib(working)}, estimated "
                  f"{fmt_gib(est.working_bytes)}: {pct(est.working_bytes, working)}")
        served_its, local_its = median(s.its), median(p.its)
        print(f"  it/s at {size}x{size}, {args.steps} steps: served {served_its or 0:.2f}, in-process "
              f"{local_its or 0:.2f}: {ratio(served_its, local_its)}; served request wall time median "
              f"{fmt_s(median(s.request_s))}")
    ledger_table(ledger)
