"""The A1111 ControlNet extension's routes: `/controlnet/version`, `/model_list`, `/module_list` and `/detect`
(a preprocessor on a small thread pool of its own, off the event loop). ControlNet units themselves come in
A1111 generation requests (`alwayson_scripts.controlnet.args`, see `serve_app.api.schemas.a1111_controlnet`)."""

from __future__ import annotations

import asyncio
from enum import Enum

from fastapi import APIRouter

from deployments.router.access_control import CLIENT
from deployments.router.gateway import off_loop
from deployments.router.gateway_dependency import GatewayDep
from serve_app.api.http_errors import FrontEnd, error_responses
from serve_app.api.images.control_detect import detect
from serve_app.api.schemas.a1111_controlnet import (
    A1111_CONTROLNET_VERSION,
    ControlNetDetectRequest,
    ControlNetDetectResponse,
    ControlNetModelList,
    ControlNetModuleDetail,
    ControlNetModuleList,
    ControlNetSlider,
    ControlNetVersion,
)
from serve_app.model.control.preprocessors import PREPROCESSORS
from serve_app.model.inspection.adapter_inspect import AdapterKind
from serve_app.model.inspection.model_hashes import control_title

TAGS: list[str | Enum] = [FrontEnd.A1111.value]
ERRORS = error_responses(FrontEnd.A1111)
router = APIRouter()


@router.get("/controlnet/version", tags=TAGS, dependencies=CLIENT, summary="A1111 ControlNet: API version",
            response_model=ControlNetVersion, responses=ERRORS)
async def controlnet_version() -> ControlNetVersion:
    return ControlNetVersion(version=A1111_CONTROLNET_VERSION)


@router.get("/controlnet/model_list", tags=TAGS, dependencies=CLIENT, summary="A1111 ControlNet: models",
            response_model=ControlNetModelList, responses=ERRORS)
async def controlnet_model_list(gw: GatewayDep, update: bool = False) -> ControlNetModelList:
    if update:
        await asyncio.to_thread(gw.adapters.refresh)
    nets = gw.adapters.of_kind(AdapterKind.CONTROLNET)
    titles = await asyncio.to_thread(lambda: [control_title(n.name, n.path) for n in nets])  # (reads the hash cache)
    return ControlNetModelList(model_list=titles)


@router.get("/controlnet/module_list", tags=TAGS, dependencies=CLIENT,
            summary="A1111 ControlNet: preprocessors", response_model=ControlNetModuleList, responses=ERRORS)
async def controlnet_module_list(alias_names: bool = False) -> ControlNetModuleList:
    detail = {name: ControlNetModuleDetail(model_free=True, sliders=[
        ControlNetSlider(name=s.name, value=s.value, min=s.min, max=s.max, step=s.step) for s in p.sliders])
        for name, p in PREPROCESSORS.items()}
    return ControlNetModuleList(module_list=list(PREPROCESSORS), module_detail=detail)


@router.post("/controlnet/detect", tags=TAGS, dependencies=CLIENT,
             summary="A1111 ControlNet: run a preprocessor on images", response_model=ControlNetDetectResponse,
             responses=error_responses(FrontEnd.A1111, 413, 422, 503))
async def controlnet_detect(gw: GatewayDep, body: ControlNetDetectRequest) -> ControlNetDetectResponse:
    limits = gw.catalog.modes[gw.current_default].config.limits
    async with gw.accepting():
        images = await off_loop(detect, body, limits)
    return ControlNetDetectResponse(images=images, info="Success")
