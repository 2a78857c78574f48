"""LoRAs through every front end of the demo application: listed with their family, applied per request
(native `loras`, A1111 `<lora:...>` tags with the real `webuiapi` client, OpenAI extra body with the real
`openai` client), and refused with errors that name them."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import webuiapi

from tests.unit.runner_helpers import pixels

pytestmark = pytest.mark.serve

REQ = {"prompt": "a red fox", "mode": "sd1", "seed": 5, "steps": 2}


@pytest.fixture(scope="module")
def client(demo_url):
    with httpx.Client(base_url=demo_url, timeout=300) as c:
        yield c


def _image(client: httpx.Client, **extra) -> bytes:
    """The image's pixels (its PNG's infotext differs whenever the request does)."""
    r = client.post("/v1/txt2img", json={**REQ, **extra})
    assert r.status_code == 200, r.text
    return pixels(base64.b64decode(r.json()["images"][0]["b64"]))


def test_adapters_are_listed_with_their_family(client):
    body = client.get("/v1/adapters").json()
    families = {a["name"]: (a["kind"], a["family"]) for a in body["adapters"]}
    assert families["tiny-sd1-lora"] == ("lora", "sd1") and families["tiny-sdxl-lora"] == ("lora", "sdxl")
    assert families["tiny-vae"] == ("vae", None) and body["problems"] == []
    paths = {a["name"]: a["path"] for a in body["adapters"]}  # relative to MODEL_ROOT: no server paths
    assert paths["tiny-sd1-lora"] == "loras/tiny-sd1-lora.safetensors"
    assert paths["tiny-vae"] == "vae/tiny-vae.safetensors"


def test_a_lora_changes_the_image_and_weight_zero_does_not(client):
    plain = _image(client)
    styled = _image(client, loras=[{"name": "tiny-sd1-lora", "weight": 1.0}])
    assert styled != plain
    assert _image(client, loras=[{"name": "tiny-sd1-lora", "weight": 0.0}]) == plain
    assert _image(client) == plain  # nothing stays applied for the next request


def test_concurrent_requests_with_different_loras_each_get_their_own(client):
    sets = [[{"name": "tiny-sd1-lora"}], [{"name": "tiny-sd1-lora-kohya", "weight": 0.7}], []] * 2
    alone = [_image(client, loras=loras) for loras in sets[:3]]
    with ThreadPoolExecutor(len(sets)) as pool:  # one sd1 replica takes 2 at a time: they overlap there
        together = list(pool.map(lambda loras: _image(client, loras=loras), sets))
    assert together == alone * 2 and len(set(alone)) == 3


@pytest.mark.parametrize(("loras", "status", "param", "text"), [
    ([{"name": "nope"}], 404, "loras[0].name", "tiny-sd1-lora"),
    ([{"name": "tiny-sdxl-lora"}], 422, "loras[0].name", "made for sdxl"),
    ([{"name": "tiny-sd1-lora", "weight": 9}], 422, "loras[0].weight", "between"),
])
def test_bad_loras_are_refused_naming_them(client, loras, status, param, text):
    r = client.post("/v1/txt2img", json={**REQ, "loras": loras})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param and text in r.json()["error"]["message"]


def test_a1111_lora_tags_and_listing_with_webuiapi(demo_url):
    host, port = demo_url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=2)
    names = {lora["name"]: lora["metadata"]["family"] for lora in api.get_loras()}
    assert names["tiny-sd1-lora"] == "sd1" and names["tiny-sd1-lora-kohya"] == "sd1"
    assert httpx.post(f"{demo_url}/sdapi/v1/refresh-loras", timeout=60).status_code == 200
    common = dict(seed=5, width=64, height=64, override_settings={"sd_model_checkpoint": "sd1"})
    plain = api.txt2img(prompt="a red fox", **common)
    tagged = api.txt2img(prompt="a red fox <lora:tiny-sd1-lora-kohya:0.9:0.5>", **common)
    assert tagged.image.tobytes() != plain.image.tobytes()
    r = httpx.post(f"{demo_url}/sdapi/v1/txt2img", json={"prompt": "x <lora:missing:1>", **common}, timeout=120)
    assert r.status_code == 404 and "missing" in r.json()["detail"]


def test_openai_extra_body_loras(demo_url):
    client = openai.OpenAI(base_url=f"{demo_url}/v1", api_key="not-needed", max_retries=0, timeout=300)
    result = client.images.generate(model="sd1", prompt="a red fox", size="64x64",
                                    extra_body={"seed": 5, "steps": 2, "loras": [{"name": "tiny-sd1-lora"}]})
    assert result.data[0].b64_json
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="sd1", prompt="x", size="64x64", extra_body={"loras": [{"name": "nope"}]})


def test_an_embedding_named_in_the_prompt_changes_the_image(client):
    plain = _image(client)
    with_embedding = _image(client, prompt="a red fox, tiny-sd1-embedding")
    assert with_embedding != plain
    assert _image(client) == plain
    negative = _image(client, negative_prompt="Tiny-SD1-Embedding")  # any case, like the tokenizer
    assert negative not in (plain, with_embedding)


def test_a_vae_override_per_request_and_its_errors(client):
    plain = _image(client)
    swapped = client.post("/v1/txt2img", json={**REQ, "vae": "tiny-vae"})
    assert swapped.status_code == 200 and swapped.json()["timings"]["adapter_loads"] <= 1
    assert base64.b64decode(swapped.json()["images"][0]["b64"]) != plain
    assert _image(client) == plain
    r = client.post("/v1/txt2img", json={**REQ, "mode": "sd2", "vae": "tiny-vae"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "vae"
    assert "allows: none" in r.json()["error"]["message"]


def test_a1111_embeddings_vaes_and_sd_vae_with_webuiapi(demo_url):
    host, port = demo_url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=2)
    embeddings = api.get_embeddings()
    assert embeddings["loaded"]["tiny-sd1-embedding"]["shape"] == 768  # the demo's default mode is sd1
    assert embeddings["skipped"]["tiny-sdxl-embedding"]["shape"] == 768 + 1280
    assert [v["model_name"] for v in api.get_sd_vae()] == ["tiny-vae"]
    common = dict(prompt="a red fox", seed=5, width=64, height=64)
    own = api.txt2img(override_settings={"sd_model_checkpoint": "sd1", "sd_vae": "Automatic"}, **common)
    swapped = api.txt2img(override_settings={"sd_model_checkpoint": "sd1", "sd_vae": "tiny-vae.safetensors"},
                          **common)
    assert swapped.image.tobytes() != own.image.tobytes()
    r = httpx.post(f"{demo_url}/sdapi/v1/txt2img", timeout=120,
                   json={**common, "override_settings": {"sd_model_checkpoint": "sd1", "sd_vae": "nope"}})
    assert r.status_code == 422 and "override_settings.sd_vae" in r.json()["detail"]


def test_openai_extra_body_vae(demo_url):
    client = openai.OpenAI(base_url=f"{demo_url}/v1", api_key="not-needed", max_retries=0, timeout=300)
    result = client.images.generate(model="sdxl", prompt="a red fox", size="64x64",
                                    extra_body={"seed": 5, "steps": 2, "vae": "tiny-vae"})
    assert result.data[0].b64_json
