"""The demo application (configs/demo.yaml) over real HTTP: native API, errors, ops routes, SSE progress."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.serve


def png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return img


@pytest.fixture(scope="module")
def client(demo_url):
    with httpx.Client(base_url=demo_url, timeout=300) as c:
        yield c


@pytest.mark.parametrize("mode", ["sd1", "sd2", "sdxl"])
def test_txt2img_every_mode_returns_png_of_requested_size(client, mode):
    r = client.post("/v1/txt2img", json={"prompt": "a red fox", "mode": mode, "width": 64, "height": 48, "seed": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == mode and body["family"] == mode
    (image,) = body["images"]
    assert image["seed"] == 7
    assert png(base64.b64decode(image["b64"])).size == (64, 48)
    assert body["timings"]["inference_s"] > 0 and body["timings"]["total_s"] >= body["timings"]["inference_s"]


def test_same_seed_same_bytes_and_png_accept(client):
    req = {"prompt": "a lighthouse", "mode": "xl", "seed": 1234, "steps": 3}
    a = client.post("/v1/txt2img", json=req, headers={"Accept": "image/png"})
    b = client.post("/v1/txt2img", json=req, headers={"Accept": "image/png"})
    c = client.post("/v1/txt2img", json={**req, "seed": 1235}, headers={"Accept": "image/png"})
    assert a.status_code == b.status_code == c.status_code == 200
    assert a.headers["content-type"] == "image/png" and a.headers["x-seed"] == "1234"
    assert a.content == b.content
    assert a.content != c.content
    assert png(a.content).size == (64, 64)


def test_num_images_gives_consecutive_seeds(client):
    r = client.post("/v1/txt2img", json={"prompt": "boats", "num_images": 2, "seed": 10})
    assert r.status_code == 200, r.text
    assert [img["seed"] for img in r.json()["images"]] == [10, 11]


def test_img2img_on_scaled_to_zero_refiner_waits_for_cold_start(client):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="PNG")
    r = client.post("/v1/img2img", json={"prompt": "sharper", "mode": "refiner", "seed": 3,
                                         "image": base64.b64encode(buf.getvalue()).decode(), "strength": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["family"] == "sdxl-refiner"
    assert png(base64.b64decode(body["images"][0]["b64"])).size == (64, 64)
    timings = body["timings"]
    assert "replica_start_s" in timings or "load_s" in timings, timings  # the cold start shows


def test_refiner_refuses_txt2img_naming_the_field(client):
    r = client.post("/v1/txt2img", json={"prompt": "x", "mode": "sdxl-refiner"})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "mode"


def test_custom_job_round_trips_and_its_errors_are_json(client):
    r = client.post("/v1/jobs/describe", json={"mode": "sd15", "payload": {"echo": [1, "two"]}})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["echo"] == [1, "two"] and result["family"] == "sd1" and result["parameter_bytes"] > 0
    bad = client.post("/v1/jobs/describe", json={"payload": {"nope": 1}})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "payload"
    unknown = client.post("/v1/jobs/upscale", json={"payload": {}})
    assert unknown.status_code == 404 and "describe" in unknown.json()["error"]["message"]


def test_a_generation_as_a_job_takes_its_route_body_typed(client):
    r = client.post("/v1/jobs/txt2img", json={"mode": "sd15", "payload": {"prompt": "x", "steps": 2, "seed": 1}})
    assert r.status_code == 200, r.text
    assert r.json()["job_type"] == "txt2img" and r.json()["result"]["images"][0]["seed"] == 1
    bad = client.post("/v1/jobs/img2img", json={"payload": {"prompt": "x"}})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "image"
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["Txt2ImgJobRequest"]["properties"]["payload"]["$ref"].endswith("/Txt2ImgRequest")
    assert {s["$ref"].rsplit("/", 1)[1] for s in schemas["TaskRequest"]["oneOf"]} == {
        "Txt2ImgTask", "Img2ImgTask", "InpaintTask", "JobTask"}
    assert schemas["ModeOut"]["properties"]["limits"]["$ref"].endswith("/ModeLimits")


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"prompt": "x", "mode": "nope"}, 404, "mode"),
    ({"prompt": "x", "width": 65}, 422, "width"),
    ({"prompt": "x", "width": 4096}, 422, "width"),
    ({"prompt": "x", "steps": 0}, 422, "steps"),
    ({"prompt": "x", "num_images": 99}, 422, "num_images"),
    ({"prompt": "x", "widht": 64}, 422, "widht"),
    ({"prompt": "x", "scheduler": "magic"}, 422, "scheduler"),
    ({"prompt": "x", "seed": -1}, 422, "seed"),
    ({"width": 64}, 422, "prompt"),
])
def test_bad_input_gets_json_error_naming_the_field(client, body, status, param):
    r = client.post("/v1/txt2img", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert err["message"]


def test_bad_img2img_image_is_422(client):
    r = client.post("/v1/img2img", json={"prompt": "x", "image": "not-base64!!"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "image"


def test_modes_registry_health_and_docs(client):
    modes = client.get("/v1/modes").json()
    by_name = {m["name"]: m for m in modes["modes"]}
    assert modes["default_mode"] == "sd1"
    assert {m: by_name[m]["family"] for m in by_name} == {
        "sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl", "sdxl-refiner": "sdxl-refiner", "sd3": "sd3", "flux": "flux",
        "flux-schnell": "flux", "flux-fill": "flux"}
    assert by_name["sd1"]["state"] == "ready" and by_name["sd1"]["measured_bytes"] > 0
    assert all(m["estimated_bytes"] > 0 for m in by_name.values())
    reg = client.get("/v1/registry").json()
    assert reg["devices"], reg
    for dev in reg["devices"]:
        assert dev["used_bytes"] + dev["reserved_bytes"] <= dev["budget_bytes"]
        assert dev["free_bytes"] == dev["budget_bytes"] - dev["used_bytes"] - dev["reserved_bytes"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/v1/txt2img", "/v1/img2img", "/v1/modes", "/v1/modes/{name}/load", "/v1/modes/{name}/unload",
                  "/v1/registry", "/v1/jobs/{job_type}", "/healthz", "/readyz", "/v1/txt2img/stream"):
        assert route in paths


def test_load_is_a_noop_when_loaded_and_unload_then_load(client):
    assert client.post("/v1/modes/sd2/load").json()["status"] == "already_loaded"
    assert client.post("/v1/modes/sd2/unload").json()["status"] == "unloaded"
    assert client.post("/v1/modes/sd2/load").json()["status"] == "loaded"
    assert client.post("/v1/modes/nope/load").status_code == 404


def test_sse_progress_one_event_per_step_then_the_image(client):
    steps = 5
    events = []
    with client.stream("POST", "/v1/txt2img/stream", json={"prompt": "x", "steps": steps, "seed": 1}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: "):])))
    progress = [e for k, e in events if k == "progress"]
    assert [e["step"] for e in progress] == list(range(1, steps + 1))
    assert all(e["total"] == steps and e["elapsed_s"] >= 0 and e["eta_s"] >= 0 for e in progress)
    assert events[-1][0] == "result"
    assert png(base64.b64decode(events[-1][1]["images"][0]["b64"])).size == (64, 64)


def test_client_disconnect_mid_stream_leaves_the_replica_serving(client):
    with client.stream("POST", "/v1/txt2img/stream", json={"prompt": "x", "steps": 40}) as r:
        for line in r.iter_lines():
            if line.startswith("event: progress"):
                break  # hang up after the first step
    r = client.post("/v1/txt2img", json={"prompt": "after", "seed": 2})
    assert r.status_code == 200, r.text


def test_openapi_describes_every_route_and_its_errors(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    operations = [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    assert len(operations) >= 22
    for path, method, op in operations:
        success = "202" if "202" in op["responses"] else "200"  # a task submission answers 202 Accepted
        ok = op["responses"][success]
        assert any(media.get("schema") for media in ok.get("content", {}).values()), (method, path, ok)
        errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
        assert "500" in errors, (method, path)
        for code, response in errors.items():
            ref = response["content"]["application/json"]["schema"].get("$ref", "")
            assert ref.rsplit("/", 1)[-1] in schemas, (method, path, code, response)
            assert "HTTPValidationError" not in ref, (method, path, code)  # FastAPI's shape is never sent
    txt2img = spec["paths"]["/v1/txt2img"]["post"]["responses"]["200"]["content"]
    assert txt2img["application/json"]["schema"]["$ref"].endswith("/GenerationResponse")
    assert "image/png" in txt2img


def test_every_response_carries_one_request_id(client):
    r = client.post("/v1/txt2img", json={"prompt": "x", "seed": 1})
    assert r.status_code == 200
    assert len(r.headers.get_list("x-request-id")) == 1 and r.json()["request_id"] == r.headers["x-request-id"]
    mine = client.post("/v1/txt2img", json={"prompt": "x", "width": 65}, headers={"X-Request-Id": "trace-77"})
    assert mine.status_code == 422 and mine.headers.get_list("x-request-id") == ["trace-77"]
