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
