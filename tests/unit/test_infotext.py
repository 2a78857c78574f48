"""Infotexts as A1111 writes and reads them: quoting, the negative prompt line, a PNG's `parameters` chunk."""

from __future__ import annotations

import io

from PIL import Image

from serve_app.model.generation.infotext import format_infotext, parse_infotext, png_with_infotext, read_infotext

PARAMS = {"Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7.0, "Seed": 1234,
          "Size": "512x768", "Model hash": "0123456789", "Model": "tiny-sd1", "Clip skip": 2,
          "Denoising strength": None, "Lora hashes": "fox: 0123456789ab, cat: ba9876543210"}


def test_the_format_is_a1111s() -> None:
    text = format_infotext("a (red fox:1.3), forest", "blurry", PARAMS)
    assert text == ("a (red fox:1.3), forest\nNegative prompt: blurry\n"
                    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, Size: 512x768, "
                    'Model hash: 0123456789, Model: tiny-sd1, Clip skip: 2, '
                    'Lora hashes: "fox: 0123456789ab, cat: ba9876543210"')
    assert format_infotext("x", "", {"Steps": 1}) == "x\nSteps: 1"


def test_what_is_written_reads_back() -> None:
    prompt, negative = "line one\nline two, with: colon", "bad\nworse"
    parsed = parse_infotext(format_infotext(prompt, negative, PARAMS))
    assert parsed["Prompt"] == prompt and parsed["Negative prompt"] == negative
    assert parsed["Sampler"] == "DPM++ 2M" and parsed["Seed"] == "1234" and parsed["Clip skip"] == "2"
    assert parsed["Lora hashes"] == "fox: 0123456789ab, cat: ba9876543210"
    assert "Denoising strength" not in parsed


def test_a_prompt_alone_is_not_mistaken_for_parameters() -> None:
    assert parse_infotext("a cat: sitting") == {"Prompt": "a cat: sitting", "Negative prompt": ""}


def test_the_png_carries_its_parameters_chunk() -> None:
    data = png_with_infotext(Image.new("RGB", (8, 8), "red"), "a cat\nSteps: 4, Seed: 1, Size: 8x8")
    assert read_infotext(Image.open(io.BytesIO(data))) == "a cat\nSteps: 4, Seed: 1, Size: 8x8"
    assert read_infotext(Image.new("RGB", (2, 2))) is None


def test_every_png_carries_its_generation_parameters(demo_models_dir) -> None:
    """A generated PNG's `parameters` chunk is A1111's infotext of that image, model hash included."""
    import io

    import torch
    from PIL import Image

    from serve_app.api.request_resolution import resolve_request
    from serve_app.api.schemas.native import Txt2ImgRequest
    from serve_app.config.modes_file import ModeConfig
    from serve_app.model.generation.infotext import parse_infotext, read_infotext
    from serve_app.model.generation.runner import ModelRunner
    from serve_app.model.inspection.model_hashes import compute_sha256

    path = demo_models_dir / "tiny-sd1"
    runner = ModelRunner(ModeConfig(name="tiny-sd1", checkpoint=str(path)), path, device=torch.device("cpu"))
    runner.load()
    body = Txt2ImgRequest(prompt="a (red:1.2) fox", negative_prompt="blurry", steps=2, seed=11, width=64,
                          height=64, scheduler="dpmpp_2m", schedule_type="karras", num_images=2)
    result = runner.generate(resolve_request(body, runner.mode, runner.family))
    for image in result.images:
        text = read_infotext(Image.open(io.BytesIO(image.data)))
        assert text == image.infotext
        parsed = parse_infotext(text)
        assert parsed["Prompt"] == "a (red:1.2) fox" and parsed["Negative prompt"] == "blurry"
        assert (parsed["Steps"], parsed["Sampler"], parsed["Schedule type"]) == ("2", "DPM++ 2M", "Karras")
        assert parsed["Seed"] == str(image.seed) and parsed["Size"] == "64x64"
        assert parsed["Model hash"] == compute_sha256(runner.info.path)[:10] and parsed["Model"] == runner.mode.name
    assert [parse_infotext(i.infotext)["Seed"] for i in result.images] == ["11", "12"]
