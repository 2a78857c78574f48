"""The official `openai` client against the demo application."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def client(demo_url):
    return openai.OpenAI(base_url=f"{demo_url}/v1", api_key="not-needed", max_retries=0, timeout=300)


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_generate_n_images_of_the_requested_size(client):
    resp = client.images.generate(model="sdxl", prompt="a castle", n=2, size="64x48", response_format="b64_json",
                                  extra_body={"seed": 5, "steps": 3})
    assert resp.created > 0
    assert len(resp.data) == 2
    sizes = {_image(d.b64_json).size for d in resp.data}
    assert sizes == {(64, 48)}
    again = client.images.generate(model="xl", prompt="a castle", n=2, size="64x48", response_format="b64_json",
                                   extra_body={"seed": 5, "steps": 3})
    assert [d.b64_json for d in again.data] == [d.b64_json for d in resp.data]  # alias, same seed: same bytes


def test_default_model_and_url_response_format(client, demo_url):
    resp = client.images.generate(prompt="a bridge", response_format="url")
    (item,) = resp.data
    assert item.url.startswith("http")
    fetched = httpx.get(item.url, timeout=30)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)


def test_an_image_url_outlives_the_router_replica_that_made_it(client, demo_url):
    import ray

    from tests.serve.conftest import wait_ready

    url = client.images.generate(prompt="a harbour", response_format="url").data[0].url
    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "dreamlab#Router#" in a["name"]]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    wait_ready(demo_url)
    fetched = httpx.get(url, timeout=30)  # kept by the TaskStore, not in the router's memory
    assert fetched.status_code == 200 and Image.open(io.BytesIO(fetched.content)).size == (64, 64)
    missing = httpx.get(url.rsplit("/", 1)[0] + "/" + "0" * 32, timeout=30)
    assert missing.status_code == 404


def test_models_lists_the_modes(client):
    ids = {m.id for m in client.models.list()}
    assert ids == {"sd1", "sd2", "sdxl", "sdxl-refiner", "sd3", "flux", "flux-schnell", "flux-fill"}
    assert client.models.retrieve("sd1").id == "sd1"


def test_unknown_model_is_404_in_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.images.generate(model="dall-e-3", prompt="x")
    body = err.value.body
    assert body["param"] == "model" and body["code"] == "model_not_found" and "dall-e-3" in body["message"]


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"size": "big"}, "size"),
    ({"size": "65x64"}, "width"),
    ({"n": 0}, "n"),
    ({"extra_body": {"steps": 0}}, "steps"),
    ({"extra_body": {"colour": "red"}}, "colour"),
])
def test_bad_input_is_400_in_openai_shape(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(prompt="x", **kwargs)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param, err.value.body
