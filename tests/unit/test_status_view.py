"""`dreamlab status` renders the ledger's lines per device and the placement (from canned API answers)."""

from __future__ import annotations

from rich.console import Console

from serve_app.cli.status_view import render

GiB = 1024**3
DEVICE = "0123456789ab:GPU-5f1c2d3e-aaaa-bbbb-cccc-0123456789ab"


def test_status_shows_each_line_of_a_device() -> None:
    registry = {
        "devices": [{"device": DEVICE, "budget_bytes": 10 * GiB, "used_bytes": 3 * GiB, "context_bytes": GiB // 2,
                     "cache_bytes": 3 * GiB, "unaccounted_bytes": GiB, "reserved_bytes": 0,
                     "free_bytes": int(2.5 * GiB), "reported_used_bytes": int(7.5 * GiB),
                     "models": [{"mode": "sdxl", "footprint_bytes": 3 * GiB}]}],
        "nodes": [], "placement": [{"mode": "sdxl", "num_gpus": 0.5, "shares_card_with": ["sd15", "sdxl"]}]}
    modes = {"default_mode": "sdxl", "modes": []}
    console = Console(width=220, record=True)
    console.print(render(modes, registry, {"status": "ready"}, "http://x"))
    out = console.export_text()
    for expected in (DEVICE, "context", "cache", "unaccounted", "driver used", "0.50 GiB", "3.00 GiB", "7.50 GiB",
                     "sdxl 0.5 GPU (shares with sd15, sdxl)"):
        assert expected in out, (expected, out)


def test_status_shows_the_component_files_a_node_holds_once_and_who_shares_them() -> None:
    registry = {"devices": [], "placement": [], "nodes": [{
        "node": "node-1", "ram_budget_bytes": 8 * GiB, "ram_used_bytes": 3 * GiB,
        "models": [{"mode": "flux"}, {"mode": "flux-schnell"}],
        "components": [{"identity": "1:2:3:4:", "path": "/models/components/t5xxl_fp16.safetensors",
                        "kind": "t5xxl", "host_bytes": 2 * GiB, "modes": ["flux", "flux-schnell"],
                        "replicas": ["flux-1", "flux-schnell-1"], "ram_tier_modes": ["flux", "flux-schnell"]}]}]}
    console = Console(width=220, record=True)
    console.print(render({"default_mode": "flux", "modes": []}, registry, {"status": "ready"}, "http://x"))
    assert "t5xxl_fp16.safetensors 2.00 GiB: flux, flux-schnell" in console.export_text()
