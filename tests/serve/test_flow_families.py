"""SD3 and FLUX.1 served like any mode: the demo's `sd3` (diffusers folder), `flux` (FLUX.1 dev folder with
shared text-encoder files) and `flux-schnell` (a transformer-only file plus component files) generate over the
native, OpenAI and A1111 APIs (txt2img, img2img, inpaint), with a FLUX LoRA; `flux-fill` (FLUX.1 Fill, a
transformer-only file in BFL's original layout) inpaints; what a family cannot use is a 422 naming both. The
modes scale from zero in configs/demo.yaml: the first request of each pays its load."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.unit.runner_helpers import png_b64, png_bytes

pytestmark = pytest.mark.serve

SIZE = 64
FLOW_MODES = ("sd3", "flux", "flux-schnell")


@pytest.fixture(scope="module")
def client(demo_url):
    with httpx.Client(base_url=demo_url, timeout=300) as c:
        yield c


def _picture() -> Image.Image:
    return Image.fromarray(np.tile(np.linspace(0, 255, SIZE, dtype=np.uint8)[:, None, None], (1, SIZE, 3)))


def _mask() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def test_modes_list_the_flow_families_with_their_samplers_and_defaults(client):
    modes = {m["name"]: m for m in _ok(client.get("/v1/modes"))["modes"]}
    assert {n: modes[n]["family"] for n in FLOW_MODES} == {"sd3": "sd3", "flux": "flux", "flux-schnell": "flux"}
    assert [modes[n]["variant"] for n in ("flux", "flux-schnell", "flux-fill")] == [
        "flux-dev", "flux-schnell", "flux-fill"]  # told from the tensors (guidance embedder, input width)
    for name in FLOW_MODES:
        assert list(modes[name]["samplers"]) == ["euler"]  # flow matching only
    assert (modes["flux-schnell"]["defaults"]["steps"], modes["flux-schnell"]["defaults"]["guidance_scale"]) == (4, 0)
    assert modes["flux"]["defaults"]["guidance_scale"] == 3.5 and modes["sd3"]["defaults"]["guidance_scale"] == 4.5
    assert "tiny-flux-schnell.safetensors" not in [p["path"] for p in _ok(client.get("/v1/modes"))["problems"]]


@pytest.mark.parametrize("mode", FLOW_MODES)
def test_native_txt2img_img2img_and_inpaint(client, mode):
    common = {"prompt": "a lighthouse", "mode": mode, "seed": 3, "steps": 2, "width": SIZE, "height": SIZE}
    first = _ok(client.post("/v1/txt2img", json=common))
    assert first["family"] == ("sd3" if mode == "sd3" else "flux")
    again = _ok(client.post("/v1/txt2img", json=common))
    assert again["images"][0]["b64"] == first["images"][0]["b64"]  # same seed, same bytes
    image = _ok(client.post("/v1/img2img", json={**common, "image": png_b64(_picture()), "strength": 0.6}))
    assert _pixels(image["images"][0]["b64"]).shape == (SIZE, SIZE, 3)
    painted = _ok(client.post("/v1/inpaint", json={**common, "image": png_b64(_picture()), "mask": png_b64(_mask()),
                                                    "strength": 0.9, "mask_blur": 0}))
    out, source = _pixels(painted["images"][0]["b64"]).astype(int), np.asarray(_picture()).astype(int)
    keep = np.ones((SIZE, SIZE), bool)
    keep[8:56, 8:56] = False
    assert np.abs(out - source)[keep].max() == 0  # the unmasked pixels come back exactly


def test_flux_fill_inpaints_over_the_native_api(client):
    mode = next(m for m in _ok(client.get("/v1/modes"))["modes"] if m["name"] == "flux-fill")
    assert mode["family"] == "flux" and mode["defaults"]["guidance_scale"] == 30  # Fill's embedded guidance
    body = {"prompt": "a boat", "mode": "flux-fill", "seed": 8, "steps": 2, "width": SIZE, "height": SIZE,
            "image": png_b64(_picture()), "mask": png_b64(_mask()), "mask_blur": 0}
    painted = _ok(client.post("/v1/inpaint", json=body))
    assert painted["mode"] == "flux-fill" and painted["family"] == "flux"
    out, source = _pixels(painted["images"][0]["b64"]).astype(int), np.asarray(_picture()).astype(int)
    inside = np.asarray(_mask()) == 255
    assert np.abs(out - source)[~inside].max() == 0  # composited back through the mask
    assert np.abs(out - source)[inside].mean() > 10  # the masked square is filled anew
    r = client.post("/v1/inpaint", json={**body, "inpaint_full_res": True})
    assert r.status_code == 422 and r.json()["error"]["param"] == "inpaint_full_res", r.text


def test_openai_generations_and_edits(demo_url):
    client = openai.OpenAI(base_url=f"{demo_url}/v1", api_key="not-needed", max_retries=0, timeout=300)
    made = client.images.generate(model="flux-schnell", prompt="a harbour", n=1, size="64x64",
                                  response_format="b64_json", extra_body={"seed": 1, "steps": 2})
    assert _pixels(made.data[0].b64_json).shape == (SIZE, SIZE, 3)
    mask = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))
    edited = client.images.edit(model="sd3", image=("in.png", png_bytes(_picture()), "image/png"),
                                mask=("mask.png", png_bytes(mask), "image/png"), prompt="a boat", n=1, size="64x64",
                                response_format="b64_json", extra_body={"seed": 2, "steps": 2})
    assert _pixels(edited.data[0].b64_json).shape == (SIZE, SIZE, 3)


def test_a1111_txt2img_and_img2img_with_a_mask(client):
    body = {"prompt": "a fox", "seed": 4, "steps": 2, "width": SIZE, "height": SIZE, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "flux"}}
    made = _ok(client.post("/sdapi/v1/txt2img", json=body))
    assert _pixels(made["images"][0]).shape == (SIZE, SIZE, 3)
    edited = _ok(client.post("/sdapi/v1/img2img", json={**body, "init_images": [png_b64(_picture())],
                                                         "mask": png_b64(_mask()), "denoising_strength": 0.8,
                                                         "override_settings": {"sd_model_checkpoint": "sd3"}}))
    assert _pixels(edited["images"][0]).shape == (SIZE, SIZE, 3)
    r = client.post("/sdapi/v1/txt2img", json={**body, "sampler_name": "DPM++ 2M"})
    assert r.status_code == 422 and "dpmpp_2m" in r.json()["detail"] and "flux" in r.json()["detail"]


def test_a_flux_lora_changes_the_image_and_an_sd1_lora_is_refused(client):
    body = {"prompt": "a lighthouse", "mode": "flux", "seed": 5, "steps": 2, "width": SIZE, "height": SIZE}
    plain = _ok(client.post("/v1/txt2img", json=body))["images"][0]["b64"]
    styled = _ok(client.post("/v1/txt2img", json={**body, "loras": [{"name": "tiny-flux-lora", "weight": 1.0}]}))
    assert not np.array_equal(_pixels(styled["images"][0]["b64"]), _pixels(plain))
    also = _ok(client.post("/v1/txt2img", json={**body, "mode": "flux-schnell",
                                                 "loras": [{"name": "tiny-flux-lora", "weight": 0.5}]}))
    assert also["mode"] == "flux-schnell"
    r = client.post("/v1/txt2img", json={**body, "loras": [{"name": "tiny-sd1-lora", "weight": 1.0}]})
    assert r.status_code == 422 and "sd1" in r.json()["error"]["message"] and "flux" in r.json()["error"]["message"]


@pytest.mark.parametrize(("mode", "extra", "param", "words"), [
    ("flux", {"clip_skip": 2}, "clip_skip", ("flux", "T5")),
    ("sd3", {"clip_skip": 2}, "clip_skip", ("sd3", "T5")),
    ("flux", {"negative_prompt": "blurry"}, "negative_prompt", ("flux-dev", "true_cfg_scale")),
    ("sd3", {"true_cfg_scale": 4.0}, "true_cfg_scale", ("FLUX", "sd3")),
    ("flux", {"scheduler": "dpmpp_2m"}, "scheduler", ("dpmpp_2m", "flux")),
    ("flux", {"prompt": "a (red:1.3) fox"}, "prompt", ("weight", "flux")),
    ("flux", {"prompt": "a tiny-sd1-embedding fox"}, "prompt", ("sd1", "flux")),
])
def test_what_a_flow_family_cannot_use_is_a_422_naming_both(client, mode, extra, param, words):
    r = client.post("/v1/txt2img", json={"prompt": "a fox", "mode": mode, "steps": 2, **extra})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param and all(w in error["message"] for w in words), error


def test_true_cfg_takes_the_negative_prompt_on_flux(client):
    body = {"prompt": "a fox", "mode": "flux", "seed": 6, "steps": 2, "width": SIZE, "height": SIZE}
    with_negative = _ok(client.post("/v1/txt2img", json={**body, "negative_prompt": "blurry",
                                                          "true_cfg_scale": 3.0}))
    plain = _ok(client.post("/v1/txt2img", json=body))
    assert not np.array_equal(_pixels(with_negative["images"][0]["b64"]), _pixels(plain["images"][0]["b64"]))


def test_flux_modes_sharing_text_encoder_files_hold_one_copy_per_node(client):
    """flux and flux-schnell name the same clip_l / t5xxl files: with both loaded, `/v1/registry` lists each file
    once on the node, with both modes (its weights are one mapping of the file that both replicas share)."""
    for mode in ("flux", "flux-schnell"):
        _ok(client.post("/v1/txt2img", json={"prompt": "a fox", "mode": mode, "steps": 1, "width": SIZE,
                                             "height": SIZE}))
    deadline, shared = time.monotonic() + 30, {}
    while time.monotonic() < deadline:  # the replicas report their mapped files with their next heartbeat
        nodes = _ok(client.get("/v1/registry"))["nodes"]
        entries = [c for n in nodes for c in n.get("components", [])]
        shared = {Path(c["path"]).name: c for c in entries if {"flux", "flux-schnell"} <= set(c["modes"])}
        if {"tiny-t5xxl.safetensors", "tiny-flux-clip-l.safetensors"} <= shared.keys():
            break
        time.sleep(0.5)
    assert {"tiny-t5xxl.safetensors", "tiny-flux-clip-l.safetensors"} <= shared.keys(), nodes
    names = [Path(c["path"]).name for c in entries]
    assert names.count("tiny-t5xxl.safetensors") == 1 and names.count("tiny-flux-clip-l.safetensors") == 1
    t5 = shared["tiny-t5xxl.safetensors"]
    assert t5["kind"] == "t5xxl" and t5["host_bytes"] > 0 and len(t5["replicas"]) >= 2
