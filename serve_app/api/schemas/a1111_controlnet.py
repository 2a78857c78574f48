"""The A1111 ControlNet extension's API: its units (`alwayson_scripts.controlnet.args`) as native
`ControlUnit`s, and the bodies of its routes (`/controlnet/model_list`, `/module_list`, `/detect`,
`/version`).

A unit is used when it is enabled (the default) and names a model; one with model `None` steers nothing
(the extension runs only its preprocessor) and is skipped. A unit without an image takes the img2img init
image, as the extension does. `pixel_perfect` runs the preprocessor at the output's scale (native
`processor_res` none); `threshold_a`/`threshold_b` of -1 mean the preprocessor's defaults; `union_control_type`
is a Union ControlNet's control (native `control_type`; "Unknown": from the preprocessor).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.api.control_resolution import A1111_UNIT_FIELDS
from serve_app.api.schemas.controlnet import ControlUnit
from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import describe_error, quote

A1111_CONTROLNET_VERSION = 2
UNITS_FIELD = "alwayson_scripts.controlnet.args"
_CONTROL_MODES: dict[Any, str] = {
    0: "balanced", 1: "prompt", 2: "control", "balanced": "balanced", "my prompt is more important": "prompt",
    "controlnet is more important": "control",
}
_RESIZE_MODES: dict[Any, str] = {
    0: "just_resize", 1: "crop", 2: "fill", "just resize": "just_resize", "crop and resize": "crop",
    "resize and fill": "fill", "inner fit (scale to fit)": "crop", "outer fit (shrink to fit)": "fill",
    "envelope (outer fit)": "fill", "just_resize": "just_resize", "crop": "crop", "fill": "fill",
}
_NO_MODEL = ("", "none")


def is_controlnet_script(name: str) -> bool:
    return name.strip().lower() == "controlnet"


def _choice(table: dict[Any, str], value: Any, field: str) -> str:
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, bool) or key not in table:
        names = [k for k in table if isinstance(k, str)]
        raise RequestValidationError(f"`{field}` {quote(value)} is not one of: 0, 1, 2, {', '.join(names)}",
                                     param=field)
    return table[key]


def _image(unit: dict[str, Any], init_image: str | None) -> str | None:
    image = unit.get("image", unit.get("input_image"))
    if isinstance(image, dict):  # the extension's {"image": ..., "mask": ...}
        image = image.get("image")
    return image or init_image


def _union_type(value: Any) -> Any:
    """The extension's `union_control_type` ("Unknown" / None: not said)."""
    return None if value is None or (isinstance(value, str) and value.strip().lower() in ("", "unknown")) else value


def _unit(i: int, unit: object, init_image: str | None) -> ControlUnit | None:
    where = f"{UNITS_FIELD}[{i}]"
    if not isinstance(unit, dict):
        raise RequestValidationError(f"`{where}` must be a ControlNet unit (an object), got {quote(unit)}",
                                     param=where)
    model = unit.get("model") or "None"
    if unit.get("enabled", True) is False or str(model).strip().lower() in _NO_MODEL:
        return None
    image = _image(unit, init_image)
    if image is None:
        raise RequestValidationError(f"`{where}.image`: a ControlNet unit needs an image on txt2img", param=f"{where}"
                                     ".image")

    def number(key: str) -> float | None:
        value = unit.get(key)
        return None if value is None or value == -1 else value

    fields = dict(model=model, image=image, weight=unit.get("weight", 1.0),
                  start=unit.get("guidance_start", 0.0), end=unit.get("guidance_end", 1.0),
                  mode=_choice(_CONTROL_MODES, unit.get("control_mode", 0), f"{where}.control_mode"),
                  resize=_choice(_RESIZE_MODES, unit.get("resize_mode", 1), f"{where}.resize_mode"),
                  preprocessor=unit.get("module") or "none",
                  processor_res=None if unit.get("pixel_perfect") else number("processor_res"),
                  threshold_a=number("threshold_a"), threshold_b=number("threshold_b"),
                  control_type=_union_type(unit.get("union_control_type")))
    try:
        return ControlUnit(**fields)
    except ValidationError as exc:  # named as the client sent it
        field, message = describe_error(dict(exc.errors()[0]))
        a1111 = f"{where}.{A1111_UNIT_FIELDS.get(field, field)}"
        raise RequestValidationError(message.replace(f"`{field}`", f"`{a1111}`", 1), param=a1111) from exc


def controlnet_units(scripts: dict[str, Any] | None, init_image: str | None = None) -> list[ControlUnit]:
    """The enabled units of the request's ControlNet entry (none when it has none)."""
    entry = next((v for k, v in (scripts or {}).items() if is_controlnet_script(k)), None)
    args = entry.get("args") if isinstance(entry, dict) else entry
    if not args:
        return []
    if not isinstance(args, list):
        raise RequestValidationError(f"`{UNITS_FIELD}` must be a list of units, got {quote(args)}", param=UNITS_FIELD)
    return [unit for i, raw in enumerate(args) if (unit := _unit(i, raw, init_image)) is not None]


class ControlNetModelList(BaseModel):
    model_list: list[str] = Field(description="ControlNet titles, `name [hash]` once a replica has hashed the file.")


class ControlNetSlider(BaseModel):
    name: str
    value: float
    min: float
    max: float
    step: float


class ControlNetModuleDetail(BaseModel):
    model_free: bool = Field(description="Whether it needs no model of its own (true for every one served).")
    sliders: list[ControlNetSlider] = Field(description="Its numbers: `threshold_a`, `threshold_b`.")


class ControlNetModuleList(BaseModel):
    module_list: list[str]
    module_detail: dict[str, ControlNetModuleDetail]


class ControlNetVersion(BaseModel):
    version: int


class ControlNetDetectRequest(BaseModel):
    """`POST /controlnet/detect`: run a preprocessor on images."""

    model_config = ConfigDict(extra="ignore")
    controlnet_module: str = Field("none", max_length=64, description="The preprocessor (see /controlnet/module_list).")
    controlnet_input_images: list[str] = Field(default_factory=list, max_length=8, description="Base64 images.")
    controlnet_images: list[str] = Field(default_factory=list, max_length=8, description="Newer clients' name of "
                                         "controlnet_input_images.")
    controlnet_processor_res: int = Field(512, ge=64, le=2048, description="Shorter side the preprocessor runs at.")
    controlnet_threshold_a: float = Field(-1, description="Its first number (-1: its default).")
    controlnet_threshold_b: float = Field(-1, description="Its second number (-1: its default).")


class ControlNetDetectResponse(BaseModel):
    images: list[str] = Field(description="The control maps, base64 PNGs.")
    info: str
