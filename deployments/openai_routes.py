"""OpenAI images API front end, a mixin of the Router: same modes, same workers, OpenAI's shapes.

`response_format: url` is served: the images stay fetchable at `/v1/images/files/{id}` of this server
for 10 minutes (see `serve_app.image_store`).
"""

from __future__ import annotations

import base64
import time

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from serve_app.compat_schemas import OpenAIImageRequest
from serve_app.http_errors import error_facts
from serve_app.image_store import ImageStore
from deployments.http_app import http_app

_CODES = {404: "model_not_found", 503: "overloaded", 507: "insufficient_vram"}


def openai_error(exc: BaseException, request_id: str = "-") -> JSONResponse:
    """OpenAI's error shape; input errors are 400 there (not 422)."""
    status, err, headers = error_facts(exc, request_id)
    status = 400 if status == 422 else status
    body = {"message": err["message"], "type": err["type"], "param": err.get("param"),
            "code": _CODES.get(status, err["type"])}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


class OpenAIRoutes:
    """Routes of the OpenAI images API. Needs the Router's catalog, handles and admission control."""

    image_store = ImageStore()

    @http_app.post("/v1/images/generations", tags=["openai"], summary="OpenAI: create images")
    async def openai_generations(self, request: Request, body: OpenAIImageRequest):
        request_id = self._request_id(request)
        try:
            async with self._accepting():
                self._select(body.model, param="model")  # an unknown model names `model`, OpenAI's field
                mode, result, _ = await self._generate(body.to_native(), request_id)
        except Exception as exc:
            return openai_error(exc, request_id)
        data = []
        for img in result.images:
            if body.response_format == "url":
                key = self.image_store.put(img.data, f"image/{img.format}")
                data.append({"url": str(request.url_for("openai_image_file", key=key)),
                             "revised_prompt": body.prompt})
            else:
                data.append({"b64_json": base64.b64encode(img.data).decode(), "revised_prompt": body.prompt})
        return {"created": int(time.time()), "data": data, "model": mode.name,
                "seeds": [img.seed for img in result.images]}

    @http_app.get("/v1/images/files/{key}", tags=["openai"], summary="An image made with response_format=url")
    async def openai_image_file(self, key: str):
        item = self.image_store.get(key)
        if item is None:
            return JSONResponse({"error": {"message": f"image {key!r} not found or expired", "type":
                                           "invalid_request_error", "param": "key", "code": "not_found"}},
                                status_code=404)
        return Response(item[0], media_type=item[1])

    @http_app.get("/v1/models", tags=["openai"], summary="OpenAI: list models (the modes)")
    async def openai_models(self):
        created = int(self.started_at)
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "dreamlab",
             "family": mode.family.value, "aliases": mode.config.aliases}
            for name, mode in self.catalog.modes.items()]}

    @http_app.get("/v1/models/{model}", tags=["openai"], summary="OpenAI: one model")
    async def openai_model(self, model: str):
        try:
            mode = self._select(model, param="model")
        except Exception as exc:
            return openai_error(exc)
        return {"id": mode.name, "object": "model", "created": int(self.started_at), "owned_by": "dreamlab"}
