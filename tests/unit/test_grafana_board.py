"""The Grafana board in configs/ is importable JSON whose every query reads a metric Dream Lab exports, and
every exported metric has a panel."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

from deployments import metrics

BOARD = Path(__file__).resolve().parents[2] / "configs" / "grafana-dreamlab.json"


def test_every_panel_queries_an_exported_metric_and_every_metric_has_a_panel() -> None:
    board = json.loads(BOARD.read_text())
    assert board["uid"] == "dreamlab" and board["panels"]
    exported = set(re.findall(r'"(dreamlab_\w+)"', inspect.getsource(metrics)))
    queried = set()
    for panel in board["panels"]:
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            names = set(re.findall(r"ray_(dreamlab_[a-z_]+?)(?:_total|_bucket)?\b", target["expr"]))
            assert names and names <= exported, (panel["title"], names - exported)
            queried |= names
    assert queried == exported
