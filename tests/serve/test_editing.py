"""Editing through every front end of the demo application: native inpainting, OpenAI image edits with the
real `openai` client and A1111 img2img masks with the real `webuiapi` client. Pixels the mask leaves
black (transparent for OpenAI: opaque) come back exactly as sent (tolerance 0, checked away from the
blurred edge); bad masks are refused naming the field."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
import webuiapi
from PIL import Image

from tests.unit.runner_helpers import png_b64, png_bytes

pytestmark = pytest.mark.serve

SIZE = 64
BOX = (16, 16, 48, 48)


@pytest.fixture(scope="module")
def client(demo_url):
    with httpx.Client(base_url=demo_url, timeout=300) as c:
        yield c


def _picture() -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), "RGB")


def _mask() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, BOX)
    return mask


def _outside(margin: int) -> np.ndarray:
    """Pixels at least `margin` away from the masked box (the blur cannot reach them)."""
    keep = np.ones((SIZE, SIZE), bool)
    keep[BOX[1] - margin:BOX[3] + margin, BOX[0] - margin:BOX[2] + margin] = False
    return keep


def _check_edit(data: bytes, margin: int) -> None:
    out = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    source = np.asarray(_picture()).astype(int)
    assert out.shape == source.shape
    assert np.abs(out - source)[_outside(margin)].max() == 0
    inside = ~_outside(-4)
    assert np.abs(out - source)[inside].mean() > 5


def test_native_inpaint_repaints_only_the_mask(client):
    body = {"prompt": "a red fox", "mode": "sd1", "image": png_b64(_picture()), "mask": png_b64(_mask()), "seed": 3,
            "strength": 0.9, "mask_blur": 2, "num_images": 2}
    r = client.post("/v1/inpaint", json=body)
    assert r.status_code == 200, r.text
    for image in r.json()["images"]:
        _check_edit(base64.b64decode(image["b64"]), margin=8)
    r = client.post("/v1/inpaint", json={**body, "mode": "sdxl", "inpaint_full_res": True, "num_images": 1})
    assert r.status_code == 200, r.text
    _check_edit(base64.b64decode(r.json()["images"][0]["b64"]), margin=8)


@pytest.mark.parametrize(("mask", "text"), [
    (png_b64(Image.new("L", (SIZE, SIZE), 0)), "is empty (all black)"),
    (base64.b64encode(b"not an image at all").decode(), "not a decodable"),
])
def test_bad_masks_are_refused_naming_the_field(client, mask, text):
    r = client.post("/v1/inpaint", json={"prompt": "x", "mode": "sd1", "image": png_b64(_picture()), "mask": mask})
    assert r.status_code == 422 and r.json()["error"]["param"] == "mask" and text in r.json()["error"]["message"]


def test_openai_images_edit_with_the_real_client(demo_url):
    client = openai.OpenAI(base_url=f"{demo_url}/v1", api_key="not-needed", max_retries=0, timeout=300)
    mask = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), BOX)  # transparent = edit here
    result = client.images.edit(model="sd1", image=("in.png", png_bytes(_picture()), "image/png"),
                                mask=("mask.png", png_bytes(mask), "image/png"), prompt="a red fox", n=1, size="64x64",
                                response_format="b64_json", extra_body={"seed": 2, "steps": 2})
    _check_edit(base64.b64decode(result.data[0].b64_json), margin=0)
    with pytest.raises(openai.BadRequestError) as info:  # no mask and an opaque image: nothing to edit
        client.images.edit(model="sd1", image=("in.png", png_bytes(_picture()), "image/png"), prompt="x")
    assert info.value.body["param"] == "image" and "no transparent pixel" in info.value.body["message"]


def test_a1111_img2img_mask_with_webuiapi(demo_url):
    host, port = demo_url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=2)
    result = api.img2img(images=[_picture()], mask_image=_mask(), prompt="a red fox", seed=4, width=SIZE,
                         height=SIZE, denoising_strength=0.9, mask_blur=2, inpainting_fill=1,
                         override_settings={"sd_model_checkpoint": "sd1"})
    _check_edit(png_bytes(result.image), margin=8)
    r = httpx.post(f"{demo_url}/sdapi/v1/img2img", timeout=120, json={
        "prompt": "x", "init_images": [png_b64(_picture())], "mask": png_b64(Image.new("L", (SIZE, SIZE)))})
    assert r.status_code == 422 and "`mask` is empty" in r.json()["detail"]


def test_native_hires_fix(client):
    r = client.post("/v1/txt2img", json={"prompt": "a fox", "mode": "sdxl", "width": 64, "height": 48, "seed": 1,
                                         "steps": 2, "hires": {"scale": 2, "upscaler": "lanczos", "strength": 0.5}})
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (128, 96)
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["b64"]))).size == (128, 96)
    r = client.post("/v1/txt2img", json={"prompt": "x", "mode": "sd1", "width": 128, "hires": {"scale": 4}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "hires.scale"


def test_a1111_hires_fix_extras_and_upscalers_with_webuiapi(demo_url):
    host, port = demo_url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=2)
    result = api.txt2img(prompt="a fox", seed=3, width=64, height=64, enable_hr=True, hr_scale=2,
                         hr_upscaler=webuiapi.HiResUpscaler.Latent, hr_second_pass_steps=2, denoising_strength=0.6,
                         override_settings={"sd_model_checkpoint": "sd1"})
    assert result.image.size == (128, 128)
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    upscaled = api.extra_single_image(image=_picture(), upscaler_1="Lanczos", upscaling_resize=2)
    assert upscaled.image.size == (2 * SIZE, 2 * SIZE)
    r = httpx.post(f"{demo_url}/sdapi/v1/extra-single-image", timeout=60,
                   json={"image": png_b64(_picture()), "upscaler_1": "ESRGAN_4x"})
    assert r.status_code == 422 and "upscaler_1" in r.json()["detail"]


def test_sdxl_base_to_refiner_across_two_modes(client, demo_url):
    r = client.post("/v1/txt2img", json={"prompt": "a castle", "mode": "sdxl", "seed": 2, "steps": 4,
                                         "refiner": {"mode": "refiner", "switch_at": 0.5}})
    assert r.status_code == 200, r.text
    stages = r.json()["timings"]["stages"]
    assert [s["mode"] for s in stages] == ["sdxl", "sdxl-refiner"] and len(r.json()["images"]) == 1
    r = client.post("/v1/txt2img", json={"prompt": "x", "mode": "sd1", "refiner": {"mode": "refiner"}})
    assert r.status_code == 422 and "sd1" in r.json()["error"]["message"] and "sdxl-refiner" in r.text
    # webuiapi has no refiner arguments: A1111's own fields, as its web UI sends them
    r = httpx.post(f"{demo_url}/sdapi/v1/txt2img", timeout=300, json={
        "prompt": "a castle", "seed": 2, "steps": 4, "width": 64, "height": 64,
        "refiner_checkpoint": "sdxl-refiner [0123abcd]", "refiner_switch_at": 0.5,
        "override_settings": {"sd_model_checkpoint": "sdxl"}})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (64, 64)
