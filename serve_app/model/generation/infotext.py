"""A1111's infotext: the generation parameters as text, written into every PNG as its `parameters` chunk,
which the web UI's PNG Info tab, Civitai and image browsers read back.

The format is A1111's (`modules/processing.py` `create_infotext`, read back by `infotext_utils.
parse_generation_parameters`): the prompt, a `Negative prompt: ...` line when there is one, then one line of
`Key: value` pairs joined by `, `; a value holding `,`, `:` or a newline is JSON-quoted. Written here in a few
lines because the format is small and no maintained library writes it.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from serve_app.model.control.control_image import pixel_perfect_resolution
from serve_app.model.control.flow_control_inspect import FLUX_UNION_TYPES
from serve_app.model.generation.a1111_samplers import a1111_names
from serve_app.model.inspection.model_hashes import control_title

if TYPE_CHECKING:
    from serve_app.model.generation.job import ControlUse, GenerationRequest

PNG_KEY = "parameters"
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _quote(value: object) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return str(json.loads(text))
    except ValueError:
        return text


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object | None]) -> str:
    """The infotext of one image; `params` in A1111's order and names (`Steps`, `Sampler`, ...), None: left out."""
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in params.items() if value is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}"


def parse_infotext(text: str) -> dict[str, str]:
    """`Prompt`, `Negative prompt` and every `Key: value` of an infotext, values unquoted (as A1111 does)."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:  # A1111's rule: a last line with fewer pairs is still prompt text
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if line.startswith("Negative prompt:"):
            negative.append(line[len("Negative prompt:"):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    out.update({key: _unquote(value) for key, value in _PARAM.findall(last)})
    return out


def png_with_infotext(image: Image.Image, infotext: str, **save: object) -> bytes:
    """The image as PNG bytes carrying `infotext` as its `parameters` text chunk."""
    info = PngInfo()
    info.add_text(PNG_KEY, infotext)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, **save)
    return out.getvalue()


def read_infotext(image: Image.Image) -> str | None:
    """The `parameters` text of an opened image (PNG text chunk), if it has one."""
    value = image.info.get(PNG_KEY)
    return value if isinstance(value, str) else None


def generation_infotext(params: GenerationRequest, seed: int, model: str, model_hash: str | None,
                        version: str) -> str:
    """The infotext of one image of `params` (made with `seed`), in A1111's keys and order."""
    sampler, schedule = a1111_names(params.scheduler)
    job = params.job
    hires = params.hires
    strength = getattr(job, "strength", None)
    return format_infotext(params.prompt, params.negative_prompt, {
        "Steps": params.steps, "Sampler": sampler, "Schedule type": schedule, "CFG scale": params.guidance_scale,
        "Seed": seed, "Size": f"{params.width}x{params.height}", "Model hash": model_hash, "Model": model,
        "Variation seed": params.subseeds[params.seeds.index(seed)] if params.subseeds else None,
        "Variation seed strength": params.subseed_strength if params.subseeds else None,
        "Denoising strength": strength,
        "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
        "Hires upscale": round(hires.width / params.width, 4) if hires else None,
        "Hires resize": f"{hires.width}x{hires.height}" if hires else None,
        "Hires steps": hires.steps if hires else None,
        "Hires upscaler": hires.upscaler if hires else None,
        "Denoising strength (hires)": hires.strength if hires else None,
        "Lora weights": ", ".join(f"{lora.name}: {lora.weight:g}" for lora in params.loras) or None,
        "VAE": params.vae.name if params.vae else None,
        **{f"ControlNet {i}": control_unit_text(c, (params.width, params.height))
           for i, c in enumerate(params.controls)},
        **{f"ControlNet {len(params.controls) + i}": f"Module: ip-adapter, Model: {ip.name}, Weight: {ip.weight:g}"
           for i, ip in enumerate(params.ip_adapters)},  # (the A1111 extension runs IP-Adapters as its units)
        "Version": version,
    })


_A1111_RESIZE = {"just_resize": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}
_A1111_CONTROL_MODE = {"balanced": "Balanced", "prompt": "My prompt is more important",
                       "control": "ControlNet is more important"}


def control_unit_text(c: ControlUse, size: tuple[int, int]) -> str:
    """One ControlNet unit of a generation of `size` as the A1111 extension writes it into the infotext
    (JSON-quoted there as a whole): its model titled with its hash (the replica hashed it when it loaded it)."""
    resolution = c.processor_res or pixel_perfect_resolution(c.image.size, size, c.resize)
    fields = {"Module": c.preprocessor, "Model": control_title(c.name, c.path), "Weight": f"{c.weight:g}",
              "Resize Mode": _A1111_RESIZE[c.resize], "Processor Res": resolution,
              "Threshold A": c.threshold_a, "Threshold B": c.threshold_b, "Guidance Start": f"{c.start:g}",
              "Guidance End": f"{c.end:g}", "Pixel Perfect": c.processor_res is None,
              "Control Mode": _A1111_CONTROL_MODE[c.mode],
              "Union Control Type": FLUX_UNION_TYPES[c.union_mode] if c.union_mode is not None else None}
    return ", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None)
