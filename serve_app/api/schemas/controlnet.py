"""The native ControlNet unit of a generation request (`controls` on txt2img, img2img and inpaint)."""

from __future__ import annotations

from pydantic import Field, model_validator

from serve_app.core.strict_model import FieldError, StrictModel
from serve_app.model.control.control_image import ResizeMode
from serve_app.model.generation.job import ControlMode

MAX_CONTROLS = 4  # ControlNet units one request may use
MAX_CONTROL_WEIGHT = 2.0


class ControlUnit(StrictModel):
    """One ControlNet steering the generation by an image (several units: MultiControlNet)."""

    model: str = Field(max_length=160, description="A ControlNet from MODEL_ROOT's `controlnet/` (see `GET "
                       "/v1/adapters`, kind `controlnet`), made for the mode's family; A1111 titles `name [hash]` "
                       "are accepted.")
    image: str = Field(description="The control image, base64 (PNG/JPEG/WebP), data URL allowed: a ready control "
                       "map with preprocessor `none`, else what the preprocessor reads.")
    weight: float = Field(1.0, ge=0.0, le=MAX_CONTROL_WEIGHT, description="Strength of the control.")
    start: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of the steps at which it starts.")
    end: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of the steps at which it stops.")
    mode: ControlMode = Field("balanced", description="balanced; prompt (A1111's \"My prompt is more important\": "
                              "the control fades in the shallow blocks); control (\"ControlNet is more important\": "
                              "also kept out of the unconditional half of guidance).")
    resize: ResizeMode = Field("crop", description="How the image is fitted to the output size: crop (scale to "
                               "cover, cut the overflow), fill (scale to fit, pad with black), just_resize "
                               "(stretch).")
    preprocessor: str = Field("none", max_length=64, description="Turns the image into the control map first: "
                              "none, invert, canny, threshold, scribble_xdog, blur_gaussian, tile_resample, shuffle "
                              "(A1111's module names; `/controlnet/module_list` lists them).")
    processor_res: int | None = Field(None, ge=64, le=2048, description="Resolution (shorter side) the "
                                      "preprocessor runs at; none: the output's scale (A1111's pixel perfect).")
    threshold_a: float | None = Field(None, description="The preprocessor's first number (canny: low threshold, "
                                      "100; threshold/scribble_xdog: the level; blur_gaussian: sigma; "
                                      "tile_resample: down sampling rate); its default when left out.")
    threshold_b: float | None = Field(None, description="Its second number (canny: high threshold, 200).")
    control_type: str | None = Field(None, max_length=32, description="A FLUX Union ControlNet's control: canny, "
                                     "tile, depth, blur, pose, gray, lq (its `control_modes` first ones); left out: "
                                     "from the preprocessor (canny, tile_resample, blur_gaussian). Other ControlNets "
                                     "take none.")

    @model_validator(mode="after")
    def _starts_before_it_ends(self) -> ControlUnit:
        if self.start >= self.end:
            raise FieldError(("end",), self.end, f"must be after `start` ({self.start})")
        return self



MAX_IP_ADAPTERS = 2


class IpAdapterUnit(StrictModel):
    """An IP-Adapter: an image as (part of) the prompt."""

    model: str = Field(max_length=160, description="An IP-Adapter from MODEL_ROOT's `ipadapter/` (see `GET "
                       "/v1/adapters`, kind `ipadapter`), made for the mode's family; its image encoder is the one "
                       "under `clip_vision/` whose width it takes.")
    image: str = Field(description="The image, base64 (PNG/JPEG/WebP), data URL allowed.")
    weight: float = Field(1.0, ge=0.0, le=MAX_CONTROL_WEIGHT, description="How much the image counts.")
