"""The `webuiapi` client (AUTOMATIC1111) against the demo application, plus progress and error shapes."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import webuiapi

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def api(demo_url):
    host, port = demo_url.removeprefix("http://").split(":")
    client = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=3)
    yield client
    client.set_options({"sd_model_checkpoint": "sd1"})  # the demo app is shared: restore its default


def test_txt2img_batch_and_iterations_with_seeds(api):
    result = api.txt2img(prompt="a cat", seed=42, width=64, height=48, batch_size=2, n_iter=2, cfg_scale=5)
    assert len(result.images) == 4
    assert {img.size for img in result.images} == {(64, 48)}
    assert result.info["all_seeds"] == [42, 43, 44, 45]
    again = api.txt2img(prompt="a cat", seed=42, width=64, height=48, batch_size=1, cfg_scale=5)
    assert again.images[0].tobytes() == result.images[0].tobytes()


def test_random_seed_is_reported(api):
    result = api.txt2img(prompt="a dog", seed=-1, width=64, height=64)
    assert result.info["seed"] >= 0 and len(result.images) == 1


def test_models_and_switching_the_default(api, demo_url):
    titles = api.util_get_model_names()
    assert sorted(titles) == ["flux", "flux-fill", "flux-schnell", "sd1", "sd2", "sd3", "sdxl", "sdxl-refiner"]
    models = api.get_sd_models()
    assert {"title", "model_name", "hash", "filename"} <= set(models[0])
    assert api.util_get_current_model() == "sd1"
    api.util_set_model("sdxl")
    assert api.util_get_current_model() == "sdxl"
    api.util_set_model("sdxl")  # already current: a no-op
    r = api.txt2img(prompt="x", width=64, height=64)
    assert r.info["sd_model_name"] == "sdxl"
    native = httpx.post(f"{demo_url}/v1/txt2img", json={"prompt": "x"}, timeout=120).json()
    assert native["mode"] == "sdxl"  # the default is the application's, not the front end's
    sd1_hash = next(m["hash"] for m in models if m["model_name"] == "sd1")
    api.set_options({"sd_model_checkpoint": f"sd1 [{sd1_hash}]"})  # an A1111-style title works too
    assert api.util_get_current_model() == "sd1"


def test_override_settings_picks_the_checkpoint_and_samplers_map(api):
    r = api.txt2img(prompt="x", width=64, height=64, sampler_name="DPM++ 2M", scheduler="Karras",
                    override_settings={"sd_model_checkpoint": "tiny-sd2.safetensors"})
    assert r.info["sd_model_name"] == "sd2"
    names = {s["name"] for s in api.get_samplers()}
    assert {"Euler", "Euler a", "DDIM", "DPM++ 2M"} <= names


def test_img2img(api):
    from PIL import Image

    init = Image.new("RGB", (64, 64), (10, 120, 200))
    r = api.img2img(images=[init], prompt="sharper", seed=1, denoising_strength=0.5, width=64, height=64,
                    override_settings={"sd_model_checkpoint": "xl"})  # the refiner stays scaled to zero
    assert len(r.images) == 1 and r.images[0].size == (64, 64)


def test_progress_reports_steps_of_the_running_job(demo_url):
    seen = []
    done = threading.Event()

    def generate():
        httpx.post(f"{demo_url}/sdapi/v1/txt2img", json={"prompt": "slow", "steps": 40, "width": 64, "height": 64},
                   timeout=300)
        done.set()

    worker = threading.Thread(target=generate)
    worker.start()
    while not done.is_set():
        p = httpx.get(f"{demo_url}/sdapi/v1/progress", timeout=30).json()
        if p["state"]["sampling_steps"]:
            seen.append((p["state"]["sampling_step"], p["state"]["sampling_steps"], p["progress"]))
        time.sleep(0.05)
    worker.join()
    assert seen, "no progress observed"
    assert all(total == 40 for _, total, _ in seen)
    steps = [s for s, _, _ in seen]
    assert steps == sorted(steps) and max(steps) > 1
    assert httpx.get(f"{demo_url}/sdapi/v1/progress").json()["progress"] == 0.0  # idle again


def test_ping_and_bad_input_in_a1111_shape(demo_url):
    assert httpx.get(f"{demo_url}/internal/ping").json() == {}
    bad = httpx.post(f"{demo_url}/sdapi/v1/txt2img", json={"prompt": "x", "width": 63}, timeout=60)
    assert bad.status_code == 422
    body = bad.json()
    assert set(body) >= {"error", "detail", "body", "errors"} and "63" in body["detail"]
    bad_sampler = httpx.post(f"{demo_url}/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "Magic"}, timeout=60)
    assert bad_sampler.status_code == 422 and "Magic" in bad_sampler.json()["detail"]
    bad_type = httpx.post(f"{demo_url}/sdapi/v1/txt2img", json={"prompt": "x", "steps": "many"}, timeout=60)
    assert bad_type.status_code == 422 and "steps" in bad_type.json()["detail"]
    unknown = httpx.post(f"{demo_url}/sdapi/v1/options", json={"sd_model_checkpoint": "nope"}, timeout=60)
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    no_image = httpx.post(f"{demo_url}/sdapi/v1/img2img", json={"prompt": "x"}, timeout=60)
    assert no_image.status_code == 422 and json.loads(no_image.text)["param"] == "init_images"


def test_an_images_infotext_reads_back_through_png_info(api, demo_url):
    r = api.txt2img(prompt="a (red:1.2) fox, BREAK snow", negative_prompt="blurry", width=64, height=64, steps=3,
                    seed=5, cfg_scale=6.5, sampler_name="DPM++ 2M SDE", scheduler="Karras",
                    override_settings={"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "sd1"})
    sent = r.info["infotexts"][0]
    assert sent == r.images[0].info["parameters"]  # the PNG carries it
    import base64
    import io

    buf = io.BytesIO()
    r.images[0].save(buf, format="PNG", pnginfo=_pnginfo(sent))
    back = httpx.post(f"{demo_url}/sdapi/v1/png-info", json={"image": base64.b64encode(buf.getvalue()).decode()},
                      timeout=60).json()
    assert back["info"] == sent
    fields = back["parameters"]
    assert fields["Prompt"] == "a (red:1.2) fox, BREAK snow" and fields["Negative prompt"] == "blurry"
    assert (fields["Steps"], fields["Seed"], fields["CFG scale"], fields["Size"]) == ("3", "5", "6.5", "64x64")
    assert (fields["Sampler"], fields["Schedule type"], fields["Clip skip"]) == ("DPM++ 2M SDE", "Karras", "2")
    assert fields["Model"] == "sd1" and len(fields["Model hash"]) == 10
    model = next(m for m in api.get_sd_models() if m["model_name"] == "sd1")
    assert model["hash"] == fields["Model hash"] and not model["filename"].startswith("/")


def _pnginfo(text: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    return info


def test_interrupt_stops_the_callers_running_generation(demo_url):
    from concurrent.futures import ThreadPoolExecutor

    body = {"prompt": "a long one", "steps": 50, "batch_size": 4, "width": 256, "height": 256, "seed": 1,
            "override_settings": {"sd_model_checkpoint": "sd1"}}
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(httpx.post, f"{demo_url}/sdapi/v1/txt2img", json=body, timeout=300)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not running.done():
            state = httpx.get(f"{demo_url}/sdapi/v1/progress", timeout=30).json()["state"]
            if state["sampling_step"] > 0:
                break
            time.sleep(0.05)
        assert httpx.post(f"{demo_url}/sdapi/v1/interrupt", timeout=30).status_code == 200
        answer = running.result()
    assert answer.status_code == 499 and "interrupted" in answer.text, answer.text
    assert httpx.get(f"{demo_url}/sdapi/v1/progress", timeout=30).json()["state"]["job_count"] == 0
