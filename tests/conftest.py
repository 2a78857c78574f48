"""Shared fixtures: offline mode and the tiny demo checkpoints, made once per session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_models_dir(tmp_path_factory):
    from serve_app.demo_models import write_demo_models

    directory = tmp_path_factory.mktemp("demo-models")
    write_demo_models(directory)
    return directory
