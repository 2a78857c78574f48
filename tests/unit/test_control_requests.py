"""ControlNet units in requests: native `controls` checked against the ControlNets under MODEL_ROOT and the
mode (family, preprocessor, image, weights, start/end), the A1111 extension's units mapped onto them (titles
with hashes, modes by number or name, disabled units and model `None` skipped, the init image as default), and
errors naming the client's own field."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from serve_app.api.adapter_catalog import AdapterCatalog
from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.a1111 import A1111Img2ImgRequest, A1111Txt2ImgRequest
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig
from serve_app.core.errors import RequestValidationError, UnknownAdapterError
from serve_app.model.demo.demo_controlnets import write_demo_controlnets
from serve_app.model.families import Family
from tests.unit.runner_helpers import png_b64

SD1 = ModeConfig(name="sd1", checkpoint="tiny-sd1")


def _b64(size: tuple[int, int] = (64, 64)) -> str:
    return png_b64(Image.new("RGB", size, "white"))


IMAGE = _b64()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> AdapterCatalog:
    root = tmp_path_factory.mktemp("root")
    write_demo_controlnets(root)
    return AdapterCatalog(root)


def _resolve(catalog: AdapterCatalog, req: Txt2ImgRequest, family: Family = Family.SD1):
    return resolve_request(req, SD1, family, adapters=catalog)


def test_native_units_resolve_to_their_files_and_settings(catalog: AdapterCatalog) -> None:
    req = Txt2ImgRequest(prompt="x", controls=[
        {"model": "tiny-sd1-controlnet", "image": IMAGE, "preprocessor": "Canny", "weight": 0.5, "start": 0.2,
         "mode": "control", "resize": "fill"},
        {"model": "tiny-sd1-controlnet [0123abcd]", "image": IMAGE}])
    request = _resolve(catalog, req)
    first, second = request.controls
    assert (first.preprocessor, first.weight, first.start, first.end, first.mode, first.resize) == (
        "canny", 0.5, 0.2, 1.0, "control", "fill")
    assert second.path == first.path and second.preprocessor == "none" and first.image.size == (64, 64)
    assert request.adapter_set_id()  # the ControlNets are part of the affinity set (weights and images are not)
    assert _resolve(catalog, Txt2ImgRequest(prompt="x")).adapter_set_id() == ""
    same_net = Txt2ImgRequest(prompt="y", controls=[{"model": "tiny-sd1-controlnet", "image": _b64((32, 32))}])
    assert _resolve(catalog, same_net).adapter_set_id() == request.adapter_set_id()


@pytest.mark.parametrize(("unit", "status", "param", "words"), [
    ({"model": "tiny-sdxl-controlnet"}, 422, "controls[0].model", ("sdxl", "sd1")),
    ({"model": "nope"}, 404, "controls[0].model", ("tiny-sd1-controlnet",)),
    ({"model": "tiny-sd1-controlnet", "preprocessor": "openpose"}, 422, "controls[0].preprocessor",
     ("openpose", "canny", "shuffle")),
    ({"model": "tiny-sd1-controlnet", "image": "not base64!"}, 422, "controls[0].image", ("base64",)),
])
def test_bad_units_name_the_field(catalog: AdapterCatalog, unit: dict, status: int, param: str,
                                  words: tuple[str, ...]) -> None:
    with pytest.raises((RequestValidationError, UnknownAdapterError)) as err:
        _resolve(catalog, Txt2ImgRequest(prompt="x", controls=[{"image": IMAGE, **unit}]))
    assert err.value.status_code == status and err.value.param == param
    assert all(w in err.value.message for w in words), err.value.message


def test_schema_bounds() -> None:
    with pytest.raises(ValueError, match="end"):
        Txt2ImgRequest(prompt="x", controls=[{"model": "m", "image": IMAGE, "start": 0.6, "end": 0.5}])
    with pytest.raises(ValueError, match="weight"):
        Txt2ImgRequest(prompt="x", controls=[{"model": "m", "image": IMAGE, "weight": 3}])
    with pytest.raises(ValueError, match="controls"):
        Txt2ImgRequest(prompt="x", controls=[{"model": "m", "image": IMAGE}] * 5)


def _a1111(units: list, cls=A1111Txt2ImgRequest, **more):
    return cls(prompt="x", alwayson_scripts={"ControlNet": {"args": units}}, **more)


def test_a1111_units_map_onto_native_ones(catalog: AdapterCatalog) -> None:
    body = _a1111([
        {"enabled": True, "module": "canny", "model": "tiny-sd1-controlnet [d14c016b]", "weight": 0.8,
         "image": IMAGE, "resize_mode": "Resize and Fill", "control_mode": "ControlNet is more important",
         "guidance_start": 0.1, "guidance_end": 0.9, "pixel_perfect": False, "processor_res": 256,
         "threshold_a": 50, "threshold_b": -1},
        {"enabled": False, "model": "tiny-sd1-controlnet", "image": IMAGE},
        {"module": "canny", "model": "None", "image": IMAGE},
        {"model": "tiny-sd1-controlnet", "image": {"image": IMAGE, "mask": None}, "control_mode": 1,
         "resize_mode": 0, "pixel_perfect": True}])
    native = body.to_native("sd1")
    (a, b) = native.controls
    assert (a.model, a.preprocessor, a.weight, a.mode, a.resize, a.start, a.end, a.processor_res, a.threshold_a,
            a.threshold_b) == ("tiny-sd1-controlnet [d14c016b]", "canny", 0.8, "control", "fill", 0.1, 0.9, 256, 50,
                               None)
    assert (b.mode, b.resize, b.processor_res, b.image) == ("prompt", "just_resize", None, IMAGE)
    assert len(resolve_request(native, SD1, Family.SD1, adapters=catalog).controls) == 2


def test_a1111_img2img_units_default_to_the_init_image() -> None:
    init = _b64((32, 32))
    body = _a1111([{"model": "tiny-sd1-controlnet", "module": "none"}], A1111Img2ImgRequest, init_images=[init])
    assert body.to_native("sd1").controls[0].image == init


@pytest.mark.parametrize(("unit", "param"), [
    ({"model": "tiny-sd1-controlnet"}, "alwayson_scripts.controlnet.args[0].image"),
    ({"model": "tiny-sd1-controlnet", "image": IMAGE, "control_mode": 7}, "alwayson_scripts.controlnet.args[0]."
                                                                        "control_mode"),
    ({"model": "tiny-sd1-controlnet", "image": IMAGE, "weight": 9}, "alwayson_scripts.controlnet.args[0].weight"),
    ({"model": "tiny-sd1-controlnet", "image": IMAGE, "guidance_end": 0}, "alwayson_scripts.controlnet.args[0]."
                                                                          "guidance_end"),
    ("not a unit", "alwayson_scripts.controlnet.args[0]"),
])
def test_bad_a1111_units_name_the_a1111_field(unit: object, param: str) -> None:
    with pytest.raises(RequestValidationError) as err:
        _a1111([unit]).to_native("sd1")
    assert err.value.param == param, err.value.message


def test_a1111_resolution_errors_name_the_a1111_field(catalog: AdapterCatalog) -> None:
    native = _a1111([{"model": "tiny-sdxl-controlnet", "image": IMAGE}]).to_native("sd1")
    with pytest.raises(RequestValidationError) as err:
        resolve_request(native, SD1, Family.SD1, adapters=catalog)
    assert err.value.param == "alwayson_scripts.controlnet.args[0].model"


def test_other_scripts_are_still_refused() -> None:
    with pytest.raises(ValueError, match="is not served"):
        A1111Txt2ImgRequest(prompt="x", alwayson_scripts={"ADetailer": {"args": [{"ad_model": "face"}]}})


@pytest.fixture(scope="module")
def ip_catalog(tmp_path_factory) -> AdapterCatalog:
    from serve_app.model.demo.demo_ipadapters import write_demo_ipadapters

    root = tmp_path_factory.mktemp("ip")
    write_demo_controlnets(root)
    write_demo_ipadapters(root)
    return AdapterCatalog(root)


def test_ip_adapters_resolve_with_their_image_encoder(ip_catalog: AdapterCatalog) -> None:
    request = _resolve(ip_catalog, Txt2ImgRequest(prompt="x", ip_adapters=[
        {"model": "tiny-sd1-ipadapter", "image": IMAGE, "weight": 0.5}]))
    (ip,) = request.ip_adapters
    assert ip.weight == 0.5 and ip.encoder_path.endswith("clip_vision/tiny-clip-vision") and ip.parameters > 0
    assert request.adapter_set_id()
    # as the A1111 extension sends it: a ControlNet unit naming an IP-Adapter
    a1111 = _a1111([{"model": "tiny-sd1-ipadapter [abc123]", "module": "ip-adapter_clip_sd15", "image": IMAGE},
                    {"model": "tiny-sd1-controlnet", "module": "canny", "image": IMAGE}]).to_native("sd1")
    both = resolve_request(a1111, SD1, Family.SD1, adapters=ip_catalog)
    assert [c.name for c in both.controls] == ["tiny-sd1-controlnet"]
    assert [i.name for i in both.ip_adapters] == ["tiny-sd1-ipadapter"]


def test_bad_ip_adapters_name_the_field(ip_catalog: AdapterCatalog, tmp_path: Path) -> None:
    with pytest.raises(RequestValidationError) as err:
        _resolve(ip_catalog, Txt2ImgRequest(prompt="x", ip_adapters=[{"model": "tiny-sd1-ipadapter", "image": IMAGE}]),
                 Family.SDXL)
    assert err.value.param == "ip_adapters[0].model" and "sd1" in err.value.message
    with pytest.raises(UnknownAdapterError):
        _resolve(ip_catalog, Txt2ImgRequest(prompt="x", ip_adapters=[{"model": "nope", "image": IMAGE}]))
    with pytest.raises(RequestValidationError, match="hires"):
        _resolve(ip_catalog, Txt2ImgRequest(prompt="x", hires={"scale": 2},
                                            ip_adapters=[{"model": "tiny-sd1-ipadapter", "image": IMAGE}]))
    no_encoder = AdapterCatalog(ip_catalog.root)
    no_encoder.adapters = [a for a in no_encoder.adapters if a.kind.value != "clip_vision"]
    with pytest.raises(RequestValidationError, match="projection dim 32"):
        _resolve(no_encoder, Txt2ImgRequest(prompt="x", ip_adapters=[{"model": "tiny-sd1-ipadapter", "image": IMAGE}]))


def test_the_infotext_records_each_unit_as_a1111_writes_it(ip_catalog: AdapterCatalog) -> None:
    from serve_app.model.generation.infotext import generation_infotext, parse_infotext

    request = _resolve(ip_catalog, Txt2ImgRequest(prompt="x", controls=[
        {"model": "tiny-sd1-controlnet", "image": IMAGE, "preprocessor": "canny", "weight": 0.5, "mode": "prompt",
         "threshold_a": 90}], ip_adapters=[{"model": "tiny-sd1-ipadapter", "image": IMAGE}]))
    text = generation_infotext(request, 1, "sd1", None, "v")
    assert ('ControlNet 0: "Module: canny, Model: tiny-sd1-controlnet, Weight: 0.5, Resize Mode: Crop and Resize, '
            'Processor Res: 512, Threshold A: 90.0, Guidance Start: 0, Guidance End: 1, Pixel Perfect: True, '
            'Control Mode: My prompt is more important"') in text
    fields = parse_infotext(text)
    assert fields["ControlNet 1"] == "Module: ip-adapter, Model: tiny-sd1-ipadapter, Weight: 1"
    assert fields["ControlNet 0"].startswith("Module: canny")


def test_the_infotext_writes_the_pixel_perfect_resolution_and_the_hash_once_known(ip_catalog: AdapterCatalog) -> None:
    """A1111 writes the resolution pixel perfect computed (not 512), and the title `name [hash]` the replica
    has once it loaded (so hashed) the ControlNet: no request needs the router to have seen the hash first."""
    from serve_app.model.generation.infotext import generation_infotext, parse_infotext
    from serve_app.model.inspection.model_hashes import compute_sha256, hash_in_background

    def unit_text(resize: str) -> str:
        request = _resolve(ip_catalog, Txt2ImgRequest(prompt="x", width=768, height=512, controls=[
            {"model": "tiny-sd1-controlnet", "image": _b64((300, 100)), "resize": resize}]))
        return parse_infotext(generation_infotext(request, 1, "sd1", None, "v"))["ControlNet 0"]

    # 300x100 to 768x512: covering scales it by 5.12 (its shorter side 512), fitting inside by 2.56 (256)
    assert "Processor Res: 512" in unit_text("crop") and "Processor Res: 256" in unit_text("fill")
    path = next(a.path for a in ip_catalog.adapters if a.name == "tiny-sd1-controlnet")
    hash_in_background(path).result(timeout=60)  # what the replica does when it loads the ControlNet
    assert f"Model: tiny-sd1-controlnet [{compute_sha256(Path(path))[:8]}]," in unit_text("crop")
