"""Discovery over a MODEL_ROOT holding one servable checkpoint next to a FLUX transformer-only file, a pickle
and a corrupt file: the application starts, serves the good one, and `/v1/modes` lists the others with why."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.unit.family_headers import flux_bfl, write_header_file


@pytest.fixture(scope="module")
def discovered(ray_serve, demo_models_dir, tmp_path_factory):
    from tests.serve.conftest import deploy_app

    tmp = tmp_path_factory.mktemp("discovery")
    root = tmp / "models"
    root.mkdir()
    shutil.copy(demo_models_dir / "tiny-sd1.safetensors", root / "tiny-sd1.safetensors")
    write_header_file(root / "flux1-dev.safetensors", flux_bfl())
    (root / "old.ckpt").write_bytes(b"\x80\x02pickle")
    (root / "broken.safetensors").write_bytes(b"\x01")
    return deploy_app("discovery", {"discover": True}, root, tmp)


def test_the_servable_file_is_served_and_the_others_are_listed(discovered):
    listed = httpx.get(f"{discovered}/v1/modes", timeout=30).json()
    assert [m["name"] for m in listed["modes"]] == ["tiny-sd1"]
    problems = {p["path"]: p for p in listed["problems"]}
    assert sorted(problems) == ["broken.safetensors", "flux1-dev.safetensors", "old.ckpt"]
    assert problems["flux1-dev.safetensors"]["variant"] == "flux-dev"
    assert "T5-XXL" in problems["flux1-dev.safetensors"]["message"]
    done = httpx.post(f"{discovered}/v1/txt2img", timeout=120,
                      json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 1})
    assert done.status_code == 200, done.text
    assert done.json()["mode"] == "tiny-sd1" and len(done.json()["images"]) == 1
