"""`dreamlab status` against the running demo application: every mode with its state, each device with its
VRAM bar and models, the RAM tier; an unreachable server is a clear error."""

from __future__ import annotations

import httpx
import pytest

from serve_app.cli.main import main

pytestmark = pytest.mark.serve


def test_status_shows_the_running_demo(demo_url, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")  # rich lays the tables out for this width
    registry = httpx.get(f"{demo_url}/v1/registry", timeout=30).json()
    assert main(["status", "--url", demo_url]) == 0
    out = capsys.readouterr().out
    for expected in ("Modes", "sd1 *", "sd2", "sdxl-refiner", "ready", "VRAM", "RAM tier", "█"):
        assert expected in out, expected
    loaded = [d for d in registry["devices"] if d["models"]]
    assert loaded and all(d["device"] in out for d in loaded)


def test_status_of_an_unreachable_server_is_an_error(capsys):
    assert main(["status", "--url", "http://127.0.0.1:9"]) == 2
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
