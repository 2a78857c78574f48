"""`dreamlab status`: one terminal view of a running Dream Lab, from its HTTP API (`/v1/modes`,
`/v1/registry`, `/readyz`): modes with state, tier, replicas and queue, a VRAM bar per device with its ledger
lines (models, CUDA contexts, allocator caches, other processes, reservations) and the driver's own count, the
models on it, and each node's RAM tier. `--watch` redraws it every few seconds (rich's Live display)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

BAR_WIDTH = 40
STATE_STYLE = {"ready": "green", "loading": "yellow", "offloaded": "cyan", "cold": "dim", "failed": "bold red"}


def fetch(url: str, api_key: str | None = None, timeout_s: float = 10.0) -> dict[str, Any]:
    """GET `url` as JSON (an API error's JSON body too); raises OSError when the server cannot be reached."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"{}")


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


BAR_STYLES = ("red", "magenta", "blue", "white", "yellow", "green")  # models, context, cache, other, reserved, free


def _bar(budget: int, *parts: int) -> Text:
    """The parts of the budget in `BAR_STYLES` order, then free (green)."""
    scale = BAR_WIDTH / max(budget, 1)
    cells = [min(BAR_WIDTH, round(part * scale)) for part in parts]
    cells.append(max(0, BAR_WIDTH - sum(cells)))
    bar = Text()
    for count, style in zip(cells, (*BAR_STYLES[:len(parts)], "green")):
        bar.append("█" * count, style=style)
    return bar


def render(modes: dict[str, Any], registry: dict[str, Any], health: dict[str, Any], url: str) -> Group:
    """The view of one snapshot of the three API answers."""
    header = Text.assemble(("Dream Lab ", "bold"), (url, "cyan"), "  status: ",
                           (str(health.get("status", "?")), "bold"), "  default mode: ",
                           (str(modes.get("default_mode", "?")), "bold"))
    table = Table(title="Modes", expand=False)
    for column in ("mode", "family", "state", "tier", "replicas", "queued", "measured", "estimated"):
        table.add_column(column)
    for m in modes.get("modes", []):
        table.add_row(m["name"] + (" *" if m.get("default") else ""), m["family"],
                      Text(m["state"], style=STATE_STYLE.get(m["state"], "")), m["tier"],
                      f"{m['loaded_replicas']}/{m['replicas']}", str(m.get("queued", 0)), _gib(m.get("measured_bytes")),
                      _gib(m.get("estimated_bytes")))
    devices = Table(title="VRAM (red models, magenta contexts, blue caches, white other processes, yellow reserved, "
                    "green free)", expand=False)
    for column in ("device", "budget", "", "models", "context", "cache", "unaccounted", "reserved", "free",
                   "driver used", "models on it"):
        devices.add_column(column)
    for d in registry.get("devices", []):
        models = ", ".join(f"{m['mode']} {_gib(m['footprint_bytes'])}" for m in d.get("models", []))
        lines = [d["used_bytes"], d.get("context_bytes", 0), d.get("cache_bytes", 0), d.get("unaccounted_bytes", 0),
                 d["reserved_bytes"]]
        devices.add_row(d["device"], _gib(d["budget_bytes"]), _bar(d["budget_bytes"], *lines),
                        *(_gib(n) for n in lines), _gib(d["free_bytes"]), _gib(d.get("reported_used_bytes")),
                        models or "-")
    shares = [f"{p['mode']} {p['num_gpus']:g} GPU" + (f" (shares with {', '.join(p['shares_card_with'])})"
                                                      if p["shares_card_with"] else "")
              for p in registry.get("placement", [])]
    nodes = Table(title="RAM tier (host memory)", expand=False)
    for column in ("node", "budget", "used", "models", "shared component files (one copy each)"):
        nodes.add_column(column)
    for n in registry.get("nodes", []):
        shared = "; ".join(f"{Path(c['path']).name} {_gib(c['host_bytes'])}: {', '.join(c['modes'])}"
                           for c in n.get("components", []))
        nodes.add_row(n["node"], _gib(n["ram_budget_bytes"]), _gib(n["ram_used_bytes"]),
                      ", ".join(m["mode"] for m in n.get("models", [])) or "-", shared or "-")
    parts: list[Any] = [header, table, devices, nodes]
    if shares:
        parts.append(Text("placement: " + "; ".join(shares), style="dim"))
    if registry.get("draining"):
        parts.insert(1, Text("draining: new work is refused", style="bold yellow"))
    return Group(*parts)


def snapshot(base_url: str, api_key: str | None = None) -> Group:
    base = base_url.rstrip("/")
    return render(fetch(f"{base}/v1/modes", api_key), fetch(f"{base}/v1/registry", api_key),
                  fetch(f"{base}/readyz", api_key), base)


def show(base_url: str, api_key: str | None = None, watch_s: float | None = None,
         console: Console | None = None) -> None:
    """Print the view once, or redraw it every `watch_s` seconds until Ctrl-C."""
    console = console or Console()
    if watch_s is None:
        console.print(snapshot(base_url, api_key))
        return
    with Live(snapshot(base_url, api_key), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(watch_s)
                live.update(snapshot(base_url, api_key))
        except KeyboardInterrupt:
            pass
