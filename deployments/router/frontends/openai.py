"""OpenAI images API front end: same modes, same workers, OpenAI's shapes.

`response_format: url` is served: the images stay fetchable at `/v1/images/files/{id}` of this server
for 10 minutes, from any router replica (see `image_urls`).
"""

from __future__ import annotations

import base64
import time
from enum import Enum
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.responses import Response

from deployments.router.access_control import CLIENT
from deployments.router.gateway import Gateway
from deployments.router.gateway_dependency import GatewayDep
from deployments.router.http_app import OffLoopJsonRoute
from deployments.router.image_urls import ImageUrls
from serve_app.api.http_errors import FrontEnd, error_responses
from serve_app.api.request_resolution import MAX_IMAGE_BYTES
from serve_app.api.schemas.native import IMAGE_CONTENT, Txt2ImgRequest
from serve_app.api.schemas.openai import (
    OpenAIEdit,
    OpenAIImage,
    OpenAIImageRequest,
    OpenAIImagesResponse,
    OpenAIModel,
    OpenAIModelList,
)
from serve_app.core.errors import ImageNotFoundError, RequestTooLargeError

OPENAI: list[str | Enum] = [FrontEnd.OPENAI.value]


async def _upload_b64(upload: UploadFile, field: str) -> str:
    """An uploaded file as base64 (what the native request takes), bounded before it is read whole."""
    data = await upload.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise RequestTooLargeError(f"`{field}` is larger than {MAX_IMAGE_BYTES} bytes", param=field)
    return base64.b64encode(data).decode()

async def image_store(request: Request) -> ImageUrls:
    """This app's store of images served by URL (`ingress.create_http_app` sets one up)."""
    store: ImageUrls = request.app.state.image_store
    return store


ImageUrlsDep = Annotated[ImageUrls, Depends(image_store)]
router = APIRouter(route_class=OffLoopJsonRoute)


@router.post("/v1/images/generations", tags=OPENAI, dependencies=CLIENT, summary="OpenAI: create images",
             response_model=OpenAIImagesResponse, response_model_exclude_none=True,
             responses=error_responses(FrontEnd.OPENAI, 404, 422, 503, 507))
async def openai_generations(gw: GatewayDep, images: ImageUrlsDep, request: Request,
                             body: OpenAIImageRequest) -> OpenAIImagesResponse:
    return await _openai_images(gw, images, request, body.to_native(), body.model, body.prompt, body.response_format)


async def _openai_images(gw: Gateway, images: ImageUrls, request: Request, native: Txt2ImgRequest,
                         model: str | None, prompt: str, response_format: str) -> OpenAIImagesResponse:
    async with gw.accepting():
        mode = gw.select(model, param="model")  # an unknown model names `model`, OpenAI's field
        done = await gw.generate(native, mode)
    data = []
    for img in done.result.images:
        if response_format == "url":
            key = await images.put(img.data, f"image/{img.format}")
            data.append(OpenAIImage(url=str(request.url_for("openai_image_file", key=key)), revised_prompt=prompt))
        else:
            data.append(OpenAIImage(b64_json=base64.b64encode(img.data).decode(), revised_prompt=prompt))
    return OpenAIImagesResponse(created=int(time.time()), data=data, model=mode.name,
                                seeds=[img.seed for img in done.result.images])


@router.post("/v1/images/edits", tags=OPENAI, dependencies=CLIENT, summary="OpenAI: edit an image",
             response_model=OpenAIImagesResponse, response_model_exclude_none=True,
             responses=error_responses(FrontEnd.OPENAI, 404, 413, 422, 503, 507))
async def openai_edits(gw: GatewayDep, images: ImageUrlsDep, request: Request,
                       form: Annotated[OpenAIEdit, Form()]) -> OpenAIImagesResponse:
    """Inpainting the OpenAI way (multipart, like `client.images.edit`), on any mode."""
    image_b64 = await _upload_b64(form.image, "image")
    mask_b64 = await _upload_b64(form.mask, "mask") if form.mask is not None else None
    return await _openai_images(gw, images, request, form.to_native(image_b64, mask_b64), form.model, form.prompt,
                                     form.response_format)


@router.get("/v1/images/files/{key}", tags=OPENAI, summary="An image made with response_format=url",
            response_class=Response,
            responses={200: {"content": IMAGE_CONTENT}, **error_responses(FrontEnd.OPENAI, 404)})
async def openai_image_file(images: ImageUrlsDep, key: str) -> Response:
    item = await images.get(key[:64])
    if item is None:
        raise ImageNotFoundError(f"image {key[:40]!r} not found or expired", param="key")
    return Response(item[0], media_type=item[1])


@router.get("/v1/models", tags=OPENAI, dependencies=CLIENT,
            summary="OpenAI: list models (the modes)", response_model=OpenAIModelList,
            responses=error_responses(FrontEnd.OPENAI))
async def openai_models(gw: GatewayDep) -> OpenAIModelList:
    created = int(gw.started_at)
    return OpenAIModelList(data=[
        OpenAIModel(id=name, created=created, owned_by="dreamlab", family=mode.family.value,
                    aliases=mode.config.aliases)
        for name, mode in gw.catalog.modes.items()])


@router.get("/v1/models/{model}", tags=OPENAI, dependencies=CLIENT,
            summary="OpenAI: one model", response_model=OpenAIModel,
            response_model_exclude_none=True, responses=error_responses(FrontEnd.OPENAI, 404))
async def openai_model(gw: GatewayDep, model: str) -> OpenAIModel:
    mode = gw.select(model, param="model")
    return OpenAIModel(id=mode.name, created=int(gw.started_at), owned_by="dreamlab")
