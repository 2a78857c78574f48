"""Typed wrapper bodies: a task is a union on `kind` (each generation kind carries that route's body, any
other kind a custom job's), a generation job carries its route's body as `payload`; both are documented in
the OpenAPI schema, and an error in the carried body names the field as its own route would."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from serve_app.api.schemas.native import (
    InpaintJobRequest,
    InpaintRequest,
    JobRequest,
    ModeOut,
    Txt2ImgJobRequest,
    Txt2ImgRequest,
)
from serve_app.api.schemas.tasks import Img2ImgTask, InpaintTask, JobTask, TaskRequest, Txt2ImgTask
from serve_app.config.modes_file import ModeDefaults, ModeLimits
from serve_app.core.strict_model import describe_error

IMAGE = "aGk="


@pytest.mark.parametrize(("body", "task_type", "request_type"), [
    ({"kind": "txt2img", "request": {"prompt": "x"}}, Txt2ImgTask, Txt2ImgRequest),
    ({"kind": "img2img", "request": {"prompt": "x", "image": IMAGE}}, Img2ImgTask, Txt2ImgRequest),
    ({"kind": "inpaint", "request": {"prompt": "x", "image": IMAGE, "mask": IMAGE}}, InpaintTask, InpaintRequest),
    ({"kind": "describe", "request": {"mode": "sd1", "payload": {"echo": 1}}}, JobTask, JobRequest),
])
def test_a_task_is_told_apart_by_its_kind(body: dict[str, Any], task_type: type, request_type: type) -> None:
    task = TaskRequest.model_validate(body).root
    assert type(task) is task_type and task.kind == body["kind"] and isinstance(task.request, request_type)


def _param(model: Any, body: object) -> str:
    with pytest.raises(ValidationError) as err:
        model.model_validate(body)
    return describe_error(dict(err.value.errors()[0]))[0]


@pytest.mark.parametrize(("body", "param"), [
    ({"kind": "txt2img", "request": {"prompt": "x", "steps": "many"}}, "steps"),
    ({"kind": "txt2img", "request": {"prompt": "x", "hires": {"scale": 0.5}}}, "hires.scale"),
    ({"kind": "img2img", "request": {"prompt": "x"}}, "image"),  # the img2img body, not the txt2img one
    ({"kind": "inpaint", "request": {"prompt": "x", "image": IMAGE}}, "mask"),
    ({"kind": "describe", "request": {"paylod": {}}}, "paylod"),
    ({"kind": "txt2img", "request": "x"}, "request"),
    ({"request": {"prompt": "x"}}, "kind"),
    ({"kind": "txt2img", "request": {"prompt": "x"}, "webhook": 7}, "webhook"),
])
def test_task_errors_name_the_field_as_its_route_would(body: dict[str, Any], param: str) -> None:
    assert _param(TaskRequest, body) == param


def test_generation_jobs_carry_their_route_body() -> None:
    job = InpaintJobRequest.model_validate({"mode": "sd1", "payload": {"prompt": "x", "image": IMAGE, "mask": IMAGE}})
    assert job.mode == "sd1" and isinstance(job.payload, InpaintRequest)
    assert _param(Txt2ImgJobRequest, {"payload": {"prompt": "x", "width": "wide"}}) == "width"
    assert _param(Txt2ImgJobRequest, {"mode": "sd1"}) == "payload"


def test_openapi_documents_each_task_body_and_typed_mode_defaults() -> None:
    app = FastAPI()

    @app.post("/tasks")
    def submit(body: TaskRequest) -> None: ...

    @app.post("/jobs/txt2img")
    def job(body: Txt2ImgJobRequest) -> ModeOut: ...

    schemas = app.openapi()["components"]["schemas"]
    assert [s["$ref"].rsplit("/", 1)[1] for s in schemas["TaskRequest"]["oneOf"]] == [
        "Txt2ImgTask", "Img2ImgTask", "InpaintTask", "JobTask"]
    assert schemas["InpaintTask"]["properties"]["request"]["$ref"].endswith("/InpaintRequest")
    assert schemas["InpaintTask"]["properties"]["kind"]["const"] == "inpaint"
    assert schemas["JobTask"]["properties"]["request"]["$ref"].endswith("/JobRequest")
    assert schemas["Txt2ImgJobRequest"]["properties"]["payload"]["$ref"].endswith("/Txt2ImgRequest")
    assert schemas["ModeOut"]["properties"]["defaults"]["$ref"].endswith("/ModeDefaults")
    assert schemas["ModeOut"]["properties"]["limits"]["$ref"].endswith("/ModeLimits")
    assert "max_steps" in schemas["ModeLimits"]["properties"]


def test_mode_out_takes_the_mode_defaults_and_limits() -> None:
    defaults, limits = ModeDefaults(width=64), ModeLimits(max_steps=9)
    common = dict(name="sd1", family="sd1", checkpoint="sd1", format="diffusers", aliases=[], default=True,
                  state="ready", tier="vram", replicas=1, loaded_replicas=1, measured_bytes=None, estimated_bytes=1,
                  scheduler="euler", jobs=["txt2img"])
    typed = ModeOut(**common, defaults=defaults, limits=limits)
    assert typed.model_dump(mode="json")["defaults"] == defaults.model_dump(mode="json")
    assert ModeOut(**common, defaults=defaults.model_dump(), limits=limits.model_dump()) == typed
    with pytest.raises(ValidationError):
        ModeOut(**common, defaults={"width": 64, "surprise": 1}, limits=limits)
