"""ControlNet through the demo application: native `controls` (one and two units change the image and are
deterministic per seed), the A1111 extension's payload from the real `webuiapi` client (`ControlNetUnit`), its
routes (`/controlnet/detect` with canny returns an edge map, model and module lists), and a ControlNet of
another family refused with a 422 naming both; the same for the FLUX mode and its transformer ControlNet."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image, ImageDraw

from tests.unit.runner_helpers import pixels, png_b64, png_bytes

pytestmark = pytest.mark.serve

SIZE = 64
REQ = {"prompt": "a red fox", "mode": "sd1", "seed": 5, "steps": 2, "width": SIZE, "height": SIZE}


def _shape() -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), "black")
    ImageDraw.Draw(img).rectangle((12, 16, 50, 44), fill="white")
    return img


SHAPE = png_b64(_shape())


@pytest.fixture(scope="module")
def client(demo_url):
    with httpx.Client(base_url=demo_url, timeout=300) as c:
        yield c


def _image(client: httpx.Client, **extra) -> bytes:
    r = client.post("/v1/txt2img", json={**REQ, **extra})
    assert r.status_code == 200, r.text
    return pixels(base64.b64decode(r.json()["images"][0]["b64"]))


def test_controlnets_are_listed_as_adapters_with_their_family(client):
    body = client.get("/v1/adapters").json()
    nets = {a["name"]: a for a in body["adapters"] if a["kind"] == "controlnet"}
    assert nets["tiny-sd1-controlnet"]["family"] == "sd1" and nets["tiny-sd1-controlnet"]["format"] == "diffusers"
    assert nets["tiny-sdxl-controlnet"]["family"] == "sdxl"
    assert nets["tiny-sd1-controlnet"]["path"] == "controlnet/tiny-sd1-controlnet"
    assert (nets["tiny-flux-controlnet"]["family"], nets["tiny-sd3-controlnet"]["family"]) == ("flux", "sd3")
    assert nets["tiny-sd3-controlnet"]["path"] == "controlnet/tiny-sd3-controlnet.safetensors"
    assert body["problems"] == []


def test_one_and_two_units_change_the_image_and_are_deterministic(client):
    canny = {"model": "tiny-sd1-controlnet", "image": SHAPE, "preprocessor": "canny"}
    inverted = {**canny, "preprocessor": "invert", "weight": 0.6, "mode": "control"}
    plain = _image(client)
    one = _image(client, controls=[canny])
    two = _image(client, controls=[canny, inverted])
    assert len({plain, one, two}) == 3
    assert _image(client, controls=[canny]) == one
    assert _image(client, controls=[canny, inverted]) == two
    assert _image(client) == plain  # nothing stays applied for the next request
    r = client.post("/v1/txt2img", json={**REQ, "controls": [canny]})
    assert 'ControlNet 0: "Module: canny, Model: tiny-sd1-controlnet' in r.json()["images"][0]["infotext"]


def test_sdxl_and_img2img_take_controls(client):
    unit = {"model": "tiny-sdxl-controlnet", "image": SHAPE, "preprocessor": "threshold"}
    assert _image(client, mode="sdxl", controls=[unit]) != _image(client, mode="sdxl")
    r = client.post("/v1/img2img", json={**REQ, "image": SHAPE, "strength": 0.8,
                                         "controls": [{"model": "tiny-sd1-controlnet", "image": SHAPE}]})
    assert r.status_code == 200, r.text


def test_a_controlnet_of_another_family_or_an_unknown_preprocessor_is_refused(client):
    r = client.post("/v1/txt2img", json={**REQ, "controls": [{"model": "tiny-sdxl-controlnet", "image": SHAPE}]})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == "controls[0].model" and "sdxl" in err["message"] and "sd1" in err["message"]
    r = client.post("/v1/txt2img", json={**REQ, "controls": [{"model": "tiny-sd1-controlnet", "image": SHAPE,
                                                              "preprocessor": "openpose"}]})
    assert r.status_code == 422 and "canny" in r.json()["error"]["message"], r.text
    r = client.post("/v1/txt2img", json={**REQ, "controls": [{"model": "nope", "image": SHAPE}]})
    assert r.status_code == 404 and "tiny-sd1-controlnet" in r.json()["error"]["message"], r.text


def test_the_a1111_controlnet_payload_from_webuiapi_works(demo_url, client):
    api = webuiapi.WebUIApi(baseurl=f"{demo_url}/sdapi/v1")
    assert api.controlnet_version() == 2
    titles = api.controlnet_model_list()
    assert any(t.startswith("tiny-sd1-controlnet") for t in titles)
    assert "canny" in api.controlnet_module_list()
    unit = webuiapi.ControlNetUnit(image=_shape(), module="canny", model=titles[0] if "sd1" in titles[0]
                                   else "tiny-sd1-controlnet", weight=1.0, threshold_a=100, threshold_b=200)
    args = dict(prompt="a red fox", seed=5, steps=2, width=SIZE, height=SIZE, sampler_name="Euler")
    api.util_set_model("sd1")
    # (webuiapi fills its mutable default `alwayson_scripts` with the units: later calls pass their own)
    controlled = api.txt2img(controlnet_units=[unit], alwayson_scripts={}, **args)
    plain = api.txt2img(alwayson_scripts={}, **args)
    assert pixels(png_bytes(controlled.image)) != pixels(png_bytes(plain.image))
    assert "ControlNet 0" in controlled.info["infotexts"][0]
    off = webuiapi.ControlNetUnit(image=_shape(), module="canny", model="tiny-sd1-controlnet", enabled=False)
    unused = api.txt2img(controlnet_units=[off], alwayson_scripts={}, **args)
    assert pixels(png_bytes(unused.image)) == pixels(png_bytes(plain.image))


def test_detect_with_canny_returns_an_edge_map(client):
    r = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [SHAPE],
                                                "controlnet_processor_res": SIZE, "controlnet_threshold_a": 100,
                                                "controlnet_threshold_b": 200})
    assert r.status_code == 200, r.text
    edges = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("L"))
    assert edges.shape == (SIZE, SIZE) and set(np.unique(edges)) == {0, 255}
    assert edges[30, 30] == 0 and edges[2, 2] == 0  # inside the shape and outside it: no edge
    assert edges[15:18, 20:44].max(axis=0).min() == 255 and (edges > 0).mean() < 0.3  # its top border: an edge
    r = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_images": [SHAPE]})
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (512, 512)  # at processor_res
    r = client.post("/controlnet/detect", json={"controlnet_module": "depth_midas", "controlnet_images": [SHAPE]})
    assert r.status_code == 422 and "canny" in r.json()["detail"], r.text


def test_an_ip_adapter_changes_the_image_natively_and_as_an_a1111_unit(demo_url, client):
    body = client.get("/v1/adapters").json()
    kinds = {a["name"]: (a["kind"], a["family"]) for a in body["adapters"]}
    assert kinds["tiny-sd1-ipadapter"] == ("ipadapter", "sd1") and kinds["tiny-clip-vision"] == ("clip_vision", None)
    ip = {"model": "tiny-sd1-ipadapter", "image": SHAPE}
    plain = _image(client)
    with_image = _image(client, ip_adapters=[ip])
    assert with_image != plain and _image(client, ip_adapters=[ip]) == with_image
    assert _image(client) == plain  # taken out again after the generation
    assert _image(client, ip_adapters=[{**ip, "weight": 0.4}]) not in (plain, with_image)
    r = client.post("/v1/txt2img", json={**REQ, "mode": "sdxl", "ip_adapters": [ip]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "ip_adapters[0].model", r.text
    api = webuiapi.WebUIApi(baseurl=f"{demo_url}/sdapi/v1")  # the extension sends IP-Adapters as its units
    api.util_set_model("sd1")
    unit = webuiapi.ControlNetUnit(image=_shape(), module="ip-adapter_clip_sd15", model="tiny-sd1-ipadapter")
    args = dict(prompt="a red fox", seed=5, steps=2, width=SIZE, height=SIZE, sampler_name="Euler")
    a1111 = api.txt2img(controlnet_units=[unit], alwayson_scripts={}, **args)
    assert pixels(png_bytes(a1111.image)) != pixels(png_bytes(api.txt2img(alwayson_scripts={}, **args).image))


FLUX = {**REQ, "mode": "flux", "seed": 6}
FLUX_UNIT = {"model": "tiny-flux-controlnet", "image": SHAPE, "preprocessor": "canny"}


def test_a_flux_controlnet_changes_the_image_natively_and_as_an_a1111_unit(demo_url, client):
    plain = _image(client, **FLUX)
    one = _image(client, **FLUX, controls=[FLUX_UNIT])
    two = _image(client, **FLUX, controls=[FLUX_UNIT, {**FLUX_UNIT, "preprocessor": "invert", "weight": 0.5}])
    assert len({plain, one, two}) == 3
    assert _image(client, **FLUX, controls=[FLUX_UNIT]) == one and _image(client, **FLUX) == plain
    api = webuiapi.WebUIApi(baseurl=f"{demo_url}/sdapi/v1")
    unit = webuiapi.ControlNetUnit(image=_shape(), module="canny", model="tiny-flux-controlnet", weight=1.0,
                                   threshold_a=100, threshold_b=200, pixel_perfect=True)
    # per request (not `util_set_model`: the app's default mode is shared by every later test of this app)
    args = dict(prompt="a red fox", seed=6, steps=2, width=SIZE, height=SIZE, sampler_name="Euler", cfg_scale=3.5,
                override_settings={"sd_model_checkpoint": "flux"})
    controlled = api.txt2img(controlnet_units=[unit], alwayson_scripts={}, **args)
    plain_a1111 = api.txt2img(alwayson_scripts={}, **args)
    assert pixels(png_bytes(controlled.image)) != pixels(png_bytes(plain_a1111.image))
    assert "Model: tiny-flux-controlnet" in controlled.info["infotexts"][0]


def test_flow_controlnets_of_another_family_or_mode_are_refused(client):
    for mode, model, other in (("flux", "tiny-sd1-controlnet", "sd1"), ("sd3", "tiny-flux-controlnet", "flux"),
                               ("sd1", "tiny-flux-controlnet", "flux")):
        r = client.post("/v1/txt2img", json={**REQ, "mode": mode, "controls": [{**FLUX_UNIT, "model": model}]})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["param"] == "controls[0].model" and other in err["message"] and mode in err["message"]
    r = client.post("/v1/txt2img", json={**FLUX, "controls": [{**FLUX_UNIT, "mode": "control"}]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "controls[0].mode", r.text
    r = client.post("/v1/img2img", json={**REQ, "mode": "sd3", "image": SHAPE,
                                         "controls": [{**FLUX_UNIT, "model": "tiny-sd3-controlnet"}]})
    assert r.status_code == 422 and "img2img" in r.json()["error"]["message"], r.text
