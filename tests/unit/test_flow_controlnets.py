"""FLUX.1 and SD3 ControlNets: recognised from their headers (full-size header-only fixtures of diffusers' own
models, the family from the tensors' widths), their config read back from the tensors, the request rules of the
transformer families (family mismatch, control mode, SD3 jobs, Union control types), and generations on the tiny
demo FLUX and SD3 models that a ControlNet changes, deterministic per seed."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw

from serve_app.api.adapter_catalog import AdapterCatalog
from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.a1111 import A1111Txt2ImgRequest
from serve_app.api.schemas.native import Img2ImgRequest, InpaintRequest, Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig
from serve_app.core.errors import AdapterFileError, RequestValidationError
from serve_app.model.control.control_inspect import read_controlnet_header
from serve_app.model.control.flow_control_inspect import flow_controlnet_config
from serve_app.model.demo.flow_demo_controlnets import demo_flow_controlnet, write_flow_demo_controlnets
from serve_app.model.demo.flow_demo_models import write_flow_demo_models
from serve_app.model.families import Family
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.inspection.adapter_inspect import AdapterFormat, AdapterKind, inspect_adapter
from tests.unit.family_headers import write_header_file
from tests.unit.runner_helpers import mode_for, pixels, png_b64

FLUX_DEV = dict(num_layers=2, num_single_layers=4, attention_head_dim=128, num_attention_heads=24,
                guidance_embeds=True)  # FLUX.1 dev widths, fewer blocks (InstantX's have 5 + 10)
SD3_MEDIUM = dict(num_layers=3, attention_head_dim=64, num_attention_heads=24, caption_projection_dim=1536,
                  pos_embed_max_size=192)  # InstantX SD3 medium ControlNet widths
SD35_LARGE = dict(num_layers=2, attention_head_dim=64, num_attention_heads=38, joint_attention_dim=None,
                  caption_projection_dim=2048, pos_embed_max_size=None, use_pos_embed=False, pos_embed_type=None,
                  force_zeros_for_pooled_projection=False)  # SD3.5 Large ControlNets (no text context)


def _meta_shapes(cls_name: str, **config: Any) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """A diffusers ControlNet's exact keys and full-size shapes, built on the meta device (no memory)."""
    import diffusers

    with torch.device("meta"):
        model = getattr(diffusers, cls_name)(**config)
    return model, {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _header(tmp_path: Path, name: str, cls_name: str, **config: Any) -> tuple[Any, Path]:
    model, shapes = _meta_shapes(cls_name, **config)
    return model, write_header_file(tmp_path / f"{name}.safetensors", shapes)


@pytest.mark.parametrize(("cls_name", "config", "family", "extra"), [
    ("FluxControlNetModel", FLUX_DEV, Family.FLUX, {"control_modes": None}),
    ("FluxControlNetModel", {**FLUX_DEV, "num_mode": 10}, Family.FLUX, {"control_modes": 10}),  # Union
    ("SD3ControlNetModel", SD3_MEDIUM, Family.SD3, {"conditioning_channels": 0}),
    ("SD3ControlNetModel", {**SD3_MEDIUM, "extra_conditioning_channels": 1}, Family.SD3,
     {"conditioning_channels": 1}),  # inpainting
    ("SD3ControlNetModel", SD35_LARGE, Family.SD3, {"conditioning_channels": 0}),
], ids=["flux-dev", "flux-union", "sd3-medium", "sd3-inpainting", "sd35-large"])
def test_transformer_controlnets_are_told_from_their_header_and_their_config_read_back(
        tmp_path: Path, cls_name: str, config: dict, family: Family, extra: dict) -> None:
    model, path = _header(tmp_path, "some-name", cls_name, **config)
    info = inspect_adapter(path, AdapterKind.CONTROLNET)
    assert (info.family, info.format) == (family, AdapterFormat.DIFFUSERS)
    assert {k: getattr(info, k) for k in extra} == extra
    assert info.parameters == sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n in model.state_dict())
    _, tensors, _ = read_controlnet_header(path)
    rebuilt, shapes = _meta_shapes(cls_name, **flow_controlnet_config(family, tensors))
    assert shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}  # the same architecture
    for key in ("force_zeros_for_pooled_projection", "use_pos_embed", "guidance_embeds", "num_mode"):
        assert rebuilt.config.get(key) == model.config.get(key)


def test_the_widths_not_the_key_style_decide_and_misfits_say_what_was_found(tmp_path: Path) -> None:
    _, shapes = _meta_shapes("FluxControlNetModel", **{**FLUX_DEV, "pooled_projection_dim": 2048})
    path = write_header_file(tmp_path / "flux-looking.safetensors", shapes)
    with pytest.raises(AdapterFileError, match=r"pooled prompt 2048 \(CLIP-L: 768\)"):
        inspect_adapter(path, AdapterKind.CONTROLNET)
    _, shapes = _meta_shapes("SD3ControlNetModel", **{**SD3_MEDIUM, "in_channels": 4, "out_channels": 4})
    path = write_header_file(tmp_path / "sd3-looking.safetensors", shapes)
    with pytest.raises(AdapterFileError, match="latent input 4 channels"):
        inspect_adapter(path, AdapterKind.CONTROLNET)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from serve_app.model.demo.demo_controlnets import write_demo_controlnets

    out = tmp_path_factory.mktemp("flow-control")
    write_flow_demo_models(out)
    write_demo_controlnets(out)
    demo_flow_controlnet(Family.SD3, extra_channels=1).save_pretrained(str(out / "controlnet" / "sd3-inpaint"))
    demo_flow_controlnet(Family.FLUX, num_mode=7).save_pretrained(str(out / "controlnet" / "flux-union"))
    return out


@pytest.fixture(scope="module")
def catalog(root: Path) -> AdapterCatalog:
    return AdapterCatalog(root)


def test_the_demo_controlnets_are_listed_with_their_family(catalog: AdapterCatalog, root: Path) -> None:
    nets = {a.name: a for a in catalog.of_kind(AdapterKind.CONTROLNET)}
    assert nets["tiny-flux-controlnet"].family is Family.FLUX and Path(nets["tiny-flux-controlnet"].path).is_dir()
    sd3 = nets["tiny-sd3-controlnet"]
    assert sd3.family is Family.SD3 and sd3.path.endswith(".safetensors")
    assert write_flow_demo_controlnets(root) == [Path(nets["tiny-flux-controlnet"].path),
                                                 Path(nets["tiny-sd3-controlnet"].path)]  # present: not rewritten


IMAGE = png_b64(Image.new("RGB", (64, 48), "white"))
FLUX, SD3 = ModeConfig(name="flux", checkpoint="tiny-flux"), ModeConfig(name="sd3", checkpoint="tiny-sd3")


def _refused(catalog: AdapterCatalog, req: Txt2ImgRequest, mode: ModeConfig, family: Family) -> RequestValidationError:
    with pytest.raises(RequestValidationError) as err:
        resolve_request(req, mode, family, adapters=catalog)
    return err.value


def _unit(model: str, **kw: Any) -> dict[str, Any]:
    return {"model": model, "image": IMAGE, **kw}


def test_a_controlnet_of_another_family_is_refused_naming_both(catalog: AdapterCatalog) -> None:
    for net, mode, family, other in (("tiny-flux-controlnet", SD3, Family.SD3, "flux"),
                                     ("tiny-sd3-controlnet", FLUX, Family.FLUX, "sd3"),
                                     ("tiny-sd1-controlnet", FLUX, Family.FLUX, "sd1")):
        err = _refused(catalog, Txt2ImgRequest(prompt="x", controls=[_unit(net)]), mode, family)
        assert err.param == "controls[0].model" and other in err.message and family.value in err.message


@pytest.mark.parametrize(("req", "mode", "family", "param", "words"), [
    (Txt2ImgRequest(prompt="x", controls=[_unit("tiny-flux-controlnet", mode="prompt")]), FLUX, Family.FLUX,
     "controls[0].mode", "balanced"),
    (Img2ImgRequest(prompt="x", image=IMAGE, controls=[_unit("tiny-sd3-controlnet")]), SD3, Family.SD3,
     "controls[0].model", "img2img"),
    (InpaintRequest(prompt="x", image=IMAGE, mask=IMAGE, controls=[_unit("tiny-sd3-controlnet")]), SD3, Family.SD3,
     "controls[0].model", "inpainting ControlNet"),
    (Txt2ImgRequest(prompt="x", controls=[_unit("sd3-inpaint")]), SD3, Family.SD3, "controls[0].model",
     "inpaint jobs only"),
    (InpaintRequest(prompt="x", image=IMAGE, mask=IMAGE, inpaint_full_res=True, controls=[_unit("sd3-inpaint")]),
     SD3, Family.SD3, "inpaint_full_res", "whole image"),
    (Txt2ImgRequest(prompt="x", controls=[_unit("flux-union")]), FLUX, Family.FLUX, "controls[0].control_type",
     "canny, tile, depth"),
    (Txt2ImgRequest(prompt="x", controls=[_unit("tiny-flux-controlnet", control_type="depth")]), FLUX, Family.FLUX,
     "controls[0].control_type", "not a Union"),
    (Img2ImgRequest(prompt="x", image=IMAGE, true_cfg_scale=2.0, controls=[_unit("tiny-flux-controlnet")]), FLUX,
     Family.FLUX, "true_cfg_scale", "true CFG"),
], ids=["soft-injection", "sd3-img2img", "sd3-inpaint-plain-net", "sd3-inpaint-net-on-txt2img", "sd3-full-res",
        "union-without-type", "type-on-plain-net", "flux-img2img-true-cfg"])
def test_what_the_transformer_controlnets_cannot_do_is_a_422_naming_the_field(
        catalog: AdapterCatalog, req: Txt2ImgRequest, mode: ModeConfig, family: Family, param: str,
        words: str) -> None:
    err = _refused(catalog, req, mode, family)
    assert err.param == param and words in err.message, err.message


def test_union_control_types_come_from_the_unit_or_its_preprocessor(catalog: AdapterCatalog) -> None:
    def modes(req: Txt2ImgRequest) -> list[int | None]:
        return [c.union_mode for c in resolve_request(req, FLUX, Family.FLUX, adapters=catalog).controls]

    assert modes(Txt2ImgRequest(prompt="x", controls=[_unit("flux-union", control_type="Depth"),
                                                     _unit("flux-union", preprocessor="canny"),
                                                     _unit("tiny-flux-controlnet")])) == [2, 0, None]
    a1111 = A1111Txt2ImgRequest(prompt="x", alwayson_scripts={"controlnet": {"args": [
        {"model": "flux-union [0123abcd]", "image": IMAGE, "union_control_type": "OpenPose"},
        {"model": "flux-union", "image": IMAGE, "module": "tile_resample", "union_control_type": "Unknown"}]}})
    assert modes(a1111.to_native("flux")) == [4, 1]
    from serve_app.model.generation.infotext import control_unit_text

    unit = resolve_request(a1111.to_native("flux"), FLUX, Family.FLUX, adapters=catalog).controls[0]
    assert control_unit_text(unit, (64, 64)).endswith("Control Mode: Balanced, Union Control Type: pose")
    bad = A1111Txt2ImgRequest(prompt="x", alwayson_scripts={"controlnet": {"args": [
        {"model": "flux-union", "image": IMAGE, "union_control_type": "Segmentation"}]}})
    err = _refused(catalog, bad.to_native("flux"), FLUX, Family.FLUX)
    assert err.param == "alwayson_scripts.controlnet.args[0].union_control_type" and "Segmentation" in err.message


def _shape_image() -> str:
    img = Image.new("RGB", (64, 48), "black")
    ImageDraw.Draw(img).rectangle((12, 10, 50, 36), fill="white")
    return png_b64(img)


@pytest.mark.parametrize(("folder", "net", "kinds"), [
    ("tiny-flux", "tiny-flux-controlnet", ("txt2img", "img2img", "inpaint")),
    ("tiny-sd3", "tiny-sd3-controlnet", ("txt2img",)),
], ids=["flux", "sd3"])
def test_a_controlnet_changes_the_image_deterministically_per_seed(
        root: Path, catalog: AdapterCatalog, folder: str, net: str, kinds: tuple[str, ...]) -> None:
    runner = ModelRunner(mode_for(root / folder), root / folder, device=torch.device("cpu"))
    runner.load()
    shape = _shape_image()
    for kind in kinds:
        extra: dict[str, Any] = {} if kind == "txt2img" else {"image": shape, "strength": 0.9}
        if kind == "inpaint":
            extra["mask"] = png_b64(Image.new("L", (64, 48), 255))
        cls = {"txt2img": Txt2ImgRequest, "img2img": Img2ImgRequest, "inpaint": InpaintRequest}[kind]

        def image(controls: list[dict], seed: int = 3, cls: Any = cls, extra: dict = extra) -> bytes:
            req = cls(prompt="a fox", seed=seed, controls=controls, **extra)
            return pixels(runner.generate(resolve_request(req, runner.mode, runner.family, adapters=catalog))
                          .images[0].data)

        unit = _unit(net, image=shape, preprocessor="canny")
        plain, one = image([]), image([unit])
        assert one != plain and image([unit]) == one, kind
        if kind == "txt2img":
            two = image([unit, {**unit, "preprocessor": "invert", "weight": 0.5}])
            assert two not in (plain, one) and image([unit], seed=4) != one
            assert image([]) == plain  # nothing stays applied
            hires = Txt2ImgRequest(prompt="a fox", seed=3, controls=[unit], hires={"scale": 2, "steps": 2,
                                                                                     "upscaler": "lanczos"})
            result = runner.generate(resolve_request(hires, runner.mode, runner.family, adapters=catalog))
            assert (result.width, result.height) == (128, 96)  # (the second pass runs without the units)
    assert runner.controls.loads == 1  # loaded once, kept in the byte-bounded cache


def test_an_sd3_inpainting_controlnet_inpaints_and_keeps_the_unmasked_pixels(root: Path,
                                                                             catalog: AdapterCatalog) -> None:
    runner = ModelRunner(mode_for(root / "tiny-sd3"), root / "tiny-sd3", device=torch.device("cpu"))
    runner.load()
    mask = Image.new("L", (64, 48), 0)
    ImageDraw.Draw(mask).rectangle((16, 8, 48, 40), fill=255)
    shape = _shape_image()
    req = InpaintRequest(prompt="a fox", seed=2, image=shape, mask=png_b64(mask), mask_blur=0,
                         controls=[_unit("sd3-inpaint", image=shape)])
    first = runner.generate(resolve_request(req, runner.mode, runner.family, adapters=catalog)).images[0].data
    again = runner.generate(resolve_request(req, runner.mode, runner.family, adapters=catalog)).images[0].data
    assert pixels(first) == pixels(again)
    out = Image.open(io.BytesIO(first)).convert("RGB")
    sent = Image.open(io.BytesIO(base64.b64decode(shape))).convert("RGB")
    assert out.getpixel((2, 2)) == sent.getpixel((2, 2)) and out.getpixel((30, 20)) != sent.getpixel((30, 20))
