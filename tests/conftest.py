"""Shared fixtures: offline mode, one torch thread, and the tiny demo checkpoints, made once per session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# The demo models are tiny: intra-op threads buy nothing and, on a busy 2-core machine, OpenMP's spin-waiting
# makes each denoising step 10x slower. DREAMLAB_TEST_TORCH_THREADS overrides.
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("DREAMLAB_TEST_TORCH_THREADS", "1"))

import pytest


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("DREAMLAB_TEST_TORCH_THREADS", "1")))


@pytest.fixture(scope="session")
def demo_models_dir(tmp_path_factory):
    """Every family's demo checkpoint, as a diffusers folder and as a single file (8 checkpoints),
    the SD1 inpainting variant and the demo adapters."""
    from serve_app.model.demo.demo_models import write_demo_models

    directory = tmp_path_factory.mktemp("demo-models")
    write_demo_models(directory)
    return directory
