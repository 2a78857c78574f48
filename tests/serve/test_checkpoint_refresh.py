"""refresh-checkpoints under discovery, with the real `webuiapi` client: a checkpoint copied into MODEL_ROOT
becomes a mode of the running application (its own Serve application) and generates; removed, it goes (its
application is deleted). The configured mode's replica is never restarted."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
import webuiapi

from tests.serve.conftest import bearer, wait_ready

pytestmark = pytest.mark.serve

APP = "refresh"
ADMIN_KEY = "refresh-admin-key"
CLIENT_KEY = "refresh-client-key"


@pytest.fixture(scope="module")
def refreshing(ray_serve, demo_models_dir, tmp_path_factory):
    from ray import serve

    from tests.serve.conftest import deploy_app

    tmp = tmp_path_factory.mktemp("refresh")
    root = tmp / "models"
    root.mkdir()
    shutil.copy(demo_models_dir / "tiny-sd1.safetensors", root / "tiny-sd1.safetensors")
    (tmp / "admin-key").write_text(ADMIN_KEY + "\n")
    (tmp / "client-keys").write_text(CLIENT_KEY + "\n")
    url = deploy_app(APP, {"discover": True}, root, tmp, wait=False,
                     access={"api_keys_file": str(tmp / "client-keys"), "admin_key_file": str(tmp / "admin-key")})
    wait_ready(url, mode="tiny-sd1")
    yield url, root, demo_models_dir
    for name in [a for a in serve.status().applications if a == APP or a.startswith(f"{APP}--")]:
        serve.delete(name)


def _modes(url: str) -> dict:
    return httpx.get(f"{url}/v1/modes", headers=bearer(CLIENT_KEY), timeout=30).json()


def _replicas_of(url: str, mode: str) -> set[str]:
    """The replica ids of `mode` the registry knows (the admin key sees real ids)."""
    stats = httpx.get(f"{url}/v1/registry", headers=bearer(ADMIN_KEY), timeout=30).json()
    return {rid for rid, seen in stats["replicas"].items() if seen["mode"] == mode}


def test_a_checkpoint_copied_in_is_served_and_goes_when_removed(refreshing):
    from ray import serve

    url, root, demo = refreshing
    api = webuiapi.WebUIApi(baseurl=f"{url}/sdapi/v1", sampler="Euler a", steps=2)
    api.set_auth("", CLIENT_KEY)  # A1111's --api-auth: the key is the password
    assert [m["model_name"] for m in api.get_sd_models()] == ["tiny-sd1"]
    configured = _replicas_of(url, "tiny-sd1")
    assert configured

    # a client key may not refresh; the admin key may, and A1111's answer is null
    assert httpx.post(f"{url}/sdapi/v1/refresh-checkpoints", headers=bearer(CLIENT_KEY)).status_code == 403
    shutil.copy(demo / "tiny-sd2.safetensors", root / "tiny-sd2.safetensors")
    admin = webuiapi.WebUIApi(baseurl=f"{url}/sdapi/v1")
    admin.set_auth("", ADMIN_KEY)
    started = time.perf_counter()
    assert admin.refresh_checkpoints() is None
    refresh_s = time.perf_counter() - started
    assert f"{APP}--tiny-sd2" in serve.status().applications
    assert sorted(m["model_name"] for m in api.get_sd_models()) == ["tiny-sd1", "tiny-sd2"]
    listed = {m["name"]: m for m in _modes(url)["modes"]}
    assert listed["tiny-sd2"]["family"] == "sd2" and listed["tiny-sd2"]["checkpoint"] == "tiny-sd2.safetensors"

    started = time.perf_counter()
    result = api.txt2img(prompt="a lighthouse", seed=3, width=64, height=64, steps=2,
                         override_settings={"sd_model_checkpoint": "tiny-sd2"})
    first_image_s = time.perf_counter() - started
    assert result.images[0].size == (64, 64)
    assert "Model: tiny-sd2" in result.info["infotexts"][0]
    print(f"refresh-checkpoints answered in {refresh_s:.2f} s; the added mode's first image {first_image_s:.2f} s")

    # a second refresh with nothing new changes nothing
    again = httpx.post(f"{url}/v1/modes/refresh", headers=bearer(ADMIN_KEY), timeout=120).json()
    assert again == {"discover": True, "added": [], "removed": [], "problems": []}

    (root / "tiny-sd2.safetensors").unlink()
    gone = httpx.post(f"{url}/v1/modes/refresh", headers=bearer(ADMIN_KEY), timeout=120).json()
    assert gone["removed"] == ["tiny-sd2"] and gone["added"] == []
    assert [m["model_name"] for m in api.get_sd_models()] == ["tiny-sd1"]
    assert [m["name"] for m in _modes(url)["modes"]] == ["tiny-sd1"]
    missing = httpx.post(f"{url}/sdapi/v1/txt2img", headers=bearer(CLIENT_KEY), timeout=60,
                         json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                               "override_settings": {"sd_model_checkpoint": "tiny-sd2"}})
    assert missing.status_code == 404, missing.text
    deadline = time.monotonic() + 120
    while f"{APP}--tiny-sd2" in serve.status().applications and time.monotonic() < deadline:
        time.sleep(0.5)
    assert f"{APP}--tiny-sd2" not in serve.status().applications
    # the configured mode still serves
    done = httpx.post(f"{url}/v1/txt2img", headers=bearer(CLIENT_KEY), timeout=120,
                      json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 1})
    assert done.status_code == 200 and done.json()["mode"] == "tiny-sd1"
    assert _replicas_of(url, "tiny-sd1") == configured  # adding and removing a mode restarted no replica
