"""An application with API keys on: each front end's 401/403, the OpenAI and A1111 clients with their
own auth forms, operator actions behind the admin key, fair sharing between keys, and operator state
that survives a registry restart and then a router restart."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.serve.conftest import bearer

pytestmark = pytest.mark.serve

CLIENT_KEYS = [f"client-key-{i}" for i in range(6)]
ADMIN_KEY = "admin-key-0"


@pytest.fixture(scope="module")
def secure(ray_serve, demo_models_dir, tmp_path_factory):
    from tests.serve.conftest import deploy_app

    tmp = tmp_path_factory.mktemp("secure")
    (tmp / "client-keys").write_text("# one per line\n" + "\n".join(CLIENT_KEYS) + "\n")
    (tmp / "admin-key").write_text(ADMIN_KEY + "\n")
    modes = {"default_mode": "fast", "modes": [
        {"name": "fast", "checkpoint": "tiny-sd1", "defaults": {"width": 64, "height": 64, "steps": 2},
         "limits": {"max_width": 256, "max_height": 256, "max_steps": 50},
         "deployment": {"max_ongoing_requests": 1}},
        {"name": "other", "checkpoint": "tiny-sd2.safetensors", "defaults": {"width": 64, "height": 64, "steps": 2}},
        {"name": "refine", "checkpoint": "tiny-sdxl-refiner", "load_on_start": False,
         "defaults": {"width": 64, "height": 64, "steps": 2}},
    ]}
    url = deploy_app("secure", modes, demo_models_dir, tmp,
                     registry={"heartbeat_interval_s": 0.3, "dead_after_s": 4.0},
                     access={"api_keys_file": str(tmp / "client-keys"), "admin_key_file": str(tmp / "admin-key")})
    return url


def test_each_front_end_refuses_without_a_key_in_its_own_shape(secure):
    native = httpx.post(f"{secure}/v1/txt2img", json={"prompt": "x"})
    assert native.status_code == 401 and native.json()["error"]["type"] == "authentication_error"
    assert native.headers["www-authenticate"].startswith("Bearer")
    openai = httpx.post(f"{secure}/v1/images/generations", json={"prompt": "x"}, headers=bearer("wrong"))
    assert openai.status_code == 401 and openai.json()["error"]["code"] == "invalid_api_key"
    a1111 = httpx.post(f"{secure}/sdapi/v1/txt2img", json={"prompt": "x"})
    assert a1111.status_code == 401 and a1111.json()["error"] == "authentication_error" and a1111.json()["detail"]
    for path in ("/v1/modes", "/v1/registry", "/v1/models", "/sdapi/v1/sd-models"):
        assert httpx.get(f"{secure}{path}").status_code == 401, path
    # bad input from a stranger is refused before it is looked at
    assert httpx.post(f"{secure}/v1/txt2img", json={"width": "x"}).status_code == 401
    for path in ("/healthz", "/readyz", "/openapi.json", "/", "/static/playground.js"):
        assert httpx.get(f"{secure}{path}").status_code == 200, path  # the playground page is public
    assert httpx.post(f"{secure}/v1/tasks", json={"kind": "txt2img", "request": {"prompt": "x"}}).status_code == 401


def test_openai_and_a1111_clients_authenticate_their_own_way(secure):
    import openai
    import webuiapi

    client = openai.OpenAI(base_url=f"{secure}/v1", api_key=CLIENT_KEYS[0])
    img = client.images.generate(model="fast", prompt="a castle", size="64x64", extra_body={"seed": 5})
    assert Image.open(io.BytesIO(base64.b64decode(img.data[0].b64_json))).size == (64, 64)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{secure}/v1", api_key="nope", max_retries=0).models.list()

    # A1111 --api-auth: basic auth, the key is the password
    api = webuiapi.WebUIApi(baseurl=f"{secure}/sdapi/v1", username="webui", password=CLIENT_KEYS[1])
    result = api.txt2img(prompt="a cat", seed=3, width=64, height=64, steps=2)
    assert result.image.size == (64, 64)


def test_operator_actions_need_the_admin_key(secure):
    client = bearer(CLIENT_KEYS[0])
    assert httpx.post(f"{secure}/v1/modes/other/unload").status_code == 401
    forbidden = httpx.post(f"{secure}/v1/modes/other/unload", headers=client)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["type"] == "permission_error"
    assert httpx.post(f"{secure}/v1/modes/other/unload", headers=bearer(ADMIN_KEY)).json()["status"] == "unloaded"
    assert httpx.post(f"{secure}/v1/modes/other/load", headers=bearer(ADMIN_KEY)).json()["status"] == "loaded"
    switch = httpx.post(f"{secure}/sdapi/v1/options", json={"sd_model_checkpoint": "other"}, headers=client)
    assert switch.status_code == 403 and switch.json()["error"] == "permission_error"
    # the img2img-only refiner cannot become the default: every txt2img without a mode would fail
    refiner = httpx.post(f"{secure}/sdapi/v1/options", json={"sd_model_checkpoint": "refine"},
                         headers=bearer(ADMIN_KEY))
    assert refiner.status_code == 422 and refiner.json()["param"] == "sd_model_checkpoint"
    assert httpx.get(f"{secure}/sdapi/v1/options", headers=client).json()["sd_model_checkpoint"] == "fast"


def test_a_burst_of_large_requests_does_not_starve_another_client(secure):
    big = {"prompt": "big", "mode": "fast", "width": 256, "height": 256, "steps": 20}
    finished: list[str] = []

    def send(key: str, body: dict, label: str) -> int:
        r = httpx.post(f"{secure}/v1/txt2img", json=body, headers=bearer(key), timeout=300)
        finished.append(label)
        return r.status_code

    with ThreadPoolExecutor(16) as pool:
        burst = [pool.submit(send, CLIENT_KEYS[k], big, f"big-{k}-{i}") for k in range(4) for i in range(3)]
        time.sleep(1.5)  # the burst is queued
        small = pool.submit(send, CLIENT_KEYS[5], {"prompt": "small", "mode": "fast", "steps": 1}, "small")
        assert small.result() == 200 and all(f.result() == 200 for f in burst)
    # first come, first served would finish all 12 large ones first; round-robin by key lets the small one
    # leave after at most one waiting request of each of the four busy keys (plus the one running)
    assert finished.index("small") <= 6, finished


def test_1000_tasks_from_one_client_leave_another_clients_task_accepted_and_run_first(secure):
    """One client submits 1000 tasks: it gets its share (16 unfinished at a time), the rest 429; another
    client's task is then accepted and runs after at most the one task already running (tasks are taken
    round-robin by client), not after the first client's queue."""
    flood = {"kind": "txt2img", "request": {"prompt": "flood", "mode": "fast", "steps": 50, "width": 128,
                                            "height": 128}}
    statuses: dict[int, int] = {}
    accepted: list[str] = []
    with httpx.Client(base_url=secure, headers=bearer(CLIENT_KEYS[0]), timeout=60) as first:
        try:
            for _ in range(1000):
                r = first.post("/v1/tasks", json=flood)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 202:
                    accepted.append(r.json()["id"])
            finished = [first.get(f"/v1/tasks/{i}").json()["status"] for i in accepted].count("succeeded")
            assert set(statuses) == {202, 429} and statuses[202] <= 16 + finished, (statuses, finished)
            with httpx.Client(base_url=secure, headers=bearer(CLIENT_KEYS[1]), timeout=60) as second:
                mine = second.post("/v1/tasks", json={"kind": "txt2img", "request": {
                    "prompt": "mine", "mode": "fast", "steps": 2}})
                assert mine.status_code == 202, mine.text
                deadline = time.monotonic() + 120
                while (task := second.get(f"/v1/tasks/{mine.json()['id']}").json())["status"] not in (
                        "succeeded", "failed") and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert task["status"] == "succeeded", task
            # it did not wait for the flood: no flood task started while it was queued (the server's own
            # timestamps; counting finished tasks afterwards raced with the flood still running)
            flood_tasks = [first.get(f"/v1/tasks/{i}").json() for i in accepted]
            overtook = [t["id"] for t in flood_tasks if t.get("started_at") is not None
                        and task["created_at"] < t["started_at"] < task["started_at"]]
            assert len(overtook) <= 1, (overtook, task)
        finally:
            for task_id in accepted:
                first.delete(f"/v1/tasks/{task_id}")


def test_default_mode_survives_a_registry_restart_then_a_router_restart(secure):
    import ray

    switched = httpx.post(f"{secure}/sdapi/v1/options", json={"sd_model_checkpoint": "other"},
                          headers=bearer(ADMIN_KEY))
    assert switched.status_code == 200, switched.text

    def default() -> str | None:
        try:
            return httpx.get(f"{secure}/v1/modes", headers=bearer(CLIENT_KEYS[0]), timeout=10).json()["default_mode"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def kill(deployment: str) -> None:
        (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if f"secure#{deployment}#" in a["name"]]
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

    assert default() == "other"
    kill("VramRegistry")
    # Serve replaces the registry; the router's next poll (every 0.2 s) gives it the state back
    def registry_answers() -> bool:
        try:
            return httpx.get(f"{secure}/v1/registry", headers=bearer(CLIENT_KEYS[0]), timeout=15).status_code == 200
        except httpx.HTTPError:
            return False

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not registry_answers():
        time.sleep(0.5)
    time.sleep(2)
    kill("Router")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and default() != "other":
        time.sleep(0.5)
    assert default() == "other"
    r = httpx.post(f"{secure}/v1/txt2img", json={"prompt": "x", "seed": 1}, headers=bearer(CLIENT_KEYS[0]),
                   timeout=300)
    assert r.status_code == 200 and r.json()["mode"] == "other"
