"""The Router: the application's HTTP ingress (FastAPI). It never touches torch.

It owns the HTTP contract, mode selection, request validation before queueing, error mapping, the
drain-first stop, and forwards work to the mode deployments through their handles. The route methods
live in `deployments/http_app.py`'s shared FastAPI app so the compatibility front ends
(`openai_routes`, `a1111_routes`) are mixins of the same class.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from serve_app.api_schemas import JobRequest
from serve_app.errors import DreamLabError, ShuttingDownError
from serve_app.generation_request import Img2ImgRequest, Txt2ImgRequest, resolve_request
from serve_app.http_errors import error_response
from serve_app.mode_catalog import ModeCatalog, ServedMode
from serve_app.modes_config import ModesFile
from deployments.a1111_routes import A1111Routes, a1111_error
from deployments.http_app import http_app
from deployments.openai_routes import OpenAIRoutes, openai_error
from deployments.vram_registry import RegistryConfig

logger = logging.getLogger(__name__)


def generation_json(result: Any, mode: ServedMode, request_id: str, total_s: float) -> dict[str, Any]:
    """A worker's GenerationResult as the native JSON response."""
    worker_s = result.timings.get("job_s", 0.0)  # everything the replica did for this request
    return {
        "request_id": request_id,
        "mode": mode.name,
        "family": mode.family.value,
        "width": result.width,
        "height": result.height,
        "steps": result.steps,
        "scheduler": result.scheduler,
        "images": [{"b64": base64.b64encode(img.data).decode(), "seed": img.seed, "format": img.format}
                   for img in result.images],
        "timings": {**result.timings, "total_s": round(total_s, 4),
                    "overhead_s": round(max(0.0, total_s - worker_s), 4)},
    }


class Router(OpenAIRoutes, A1111Routes):
    """HTTP ingress. `mode_handles` maps mode name -> DeploymentHandle; `registry` is the registry handle."""

    def __init__(self, modes: dict[str, Any], model_root: str, mode_handles: dict[str, Any], registry: Any = None,
                 registry_config: dict[str, Any] | None = None) -> None:
        self.catalog = ModeCatalog(ModesFile.model_validate(modes), Path(model_root))
        self.handles = mode_handles
        self.registry = registry
        self.registry_config = RegistryConfig.model_validate(registry_config or {})
        self.router_id = uuid.uuid4().hex[:12]
        self.inflight = 0
        self.draining = False
        self.current_default = self.catalog.default
        self._default_version = 0  # registry version of current_default (A1111 switches)
        self.started_at = time.time()
        self.live_progress: dict[str, dict[str, Any]] = {}  # request id -> step, total, started, eta_s
        self._poller: asyncio.Task | None = None

    # -- plumbing ------------------------------------------------------------------------------------
    async def _ensure_poller(self) -> None:
        """Report in-flight work to the registry and learn the drain flag and default mode (every 0.2 s).

        The first call polls once before returning, so a router's very first request already knows
        whether the application drains."""
        if self._poller is None and self.registry is not None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_registry())
            await self._poll_once()

    async def _poll_once(self) -> None:
        try:
            ans = await asyncio.wait_for(self.registry.router_poll.remote(self.router_id, self.inflight), 5.0)
        except Exception as exc:
            logger.warning("registry poll failed: %s", exc)
            return
        self.draining = ans["draining"]
        # a poll sent before this router's own switch may answer after it: only newer versions count
        if ans["default_version"] > self._default_version and ans["default_mode"] in self.catalog.modes:
            self.current_default, self._default_version = ans["default_mode"], ans["default_version"]

    async def _poll_registry(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            await self._poll_once()

    async def set_default_mode(self, name: str) -> None:
        """Switch the application's default mode (shared with every router through the registry)."""
        self.current_default = name
        if self.registry is not None:
            self._default_version = await self.registry.set_default_mode.remote(name)

    async def _admit(self) -> None:
        """Count a request in flight; refuse it while the application drains."""
        await self._ensure_poller()
        if self.draining:
            raise ShuttingDownError("Dream Lab is shutting down: in-flight work finishes, new work is refused",
                                    retry_after_s=30)
        self.inflight += 1

    @contextlib.asynccontextmanager
    async def _accepting(self):
        await self._admit()
        try:
            yield
        finally:
            self.inflight -= 1

    @staticmethod
    def _request_id(request: Request) -> str:
        return request.headers.get("x-request-id") or uuid.uuid4().hex[:16]

    def _handle(self, mode: ServedMode):
        return self.handles[mode.name]

    def _select(self, name: str | None, param: str = "mode") -> ServedMode:
        """The named mode (or alias), or the application's current default mode."""
        return self.catalog.select(name or self.current_default, param=param)

    @staticmethod
    def _worker_payload(mode: ServedMode, body: Txt2ImgRequest) -> dict[str, Any]:
        """Validate `body` against `mode` (bad input fails here, before it takes a queue slot) and return
        what the worker's job gets."""
        resolve_request(body, mode.config, mode.family)
        return body.model_dump(exclude_none=True, exclude={"mode"})

    async def _generate(self, body: Txt2ImgRequest, request_id: str):
        """Select the mode, validate against it, forward; returns (mode, worker result, seconds)."""
        started = time.perf_counter()
        mode = self._select(body.mode)
        payload = self._worker_payload(mode, body)
        job = "img2img" if isinstance(body, Img2ImgRequest) else "txt2img"
        logger.info("[%s] %s on mode %s", request_id, job, mode.name)
        result = await self._handle(mode).run.remote(job, payload, request_id)
        return mode, result, time.perf_counter() - started

    async def _native_generation(self, request: Request, body: Txt2ImgRequest):
        request_id = self._request_id(request)
        try:
            async with self._accepting():
                mode, result, total_s = await self._generate(body, request_id)
        except Exception as exc:
            return error_response(exc, request_id)
        if "image/" in request.headers.get("accept", "") and len(result.images) == 1:
            img = result.images[0]
            return Response(img.data, media_type=f"image/{img.format}",
                            headers={"X-Seed": str(img.seed), "X-Request-ID": request_id})
        return JSONResponse(generation_json(result, mode, request_id, total_s))

    # -- native API ----------------------------------------------------------------------------------
    @http_app.post("/v1/txt2img", tags=["native"], summary="Text to image")
    async def txt2img(self, request: Request, body: Txt2ImgRequest):
        """`Accept: image/png` with one image returns the PNG bytes instead of JSON."""
        return await self._native_generation(request, body)

    @http_app.post("/v1/img2img", tags=["native"], summary="Image to image")
    async def img2img(self, request: Request, body: Img2ImgRequest):
        return await self._native_generation(request, body)

    @http_app.post("/v1/txt2img/stream", tags=["native"], summary="Text to image with live progress (SSE)")
    async def txt2img_stream(self, request: Request, body: Txt2ImgRequest):
        """Server-sent events: `progress` (step, total, elapsed_s, eta_s) per step, then `result` or `error`."""
        request_id = self._request_id(request)
        try:
            await self._admit()
        except ShuttingDownError as exc:
            return error_response(exc, request_id)
        try:
            mode = self._select(body.mode)
            payload = self._worker_payload(mode, body)
        except Exception as exc:
            self.inflight -= 1
            return error_response(exc, request_id)
        started = time.perf_counter()
        gen = self._handle(mode).options(stream=True).run_stream.remote("txt2img", payload, request_id)

        async def events():
            import json

            try:
                async for event in gen:
                    if event["event"] == "result":
                        data = generation_json(event["result"], mode, request_id, time.perf_counter() - started)
                        yield f"event: result\ndata: {json.dumps(data)}\n\n"
                    else:
                        yield f"event: progress\ndata: {json.dumps(event)}\n\n"
            except Exception as exc:  # errors after the 200 went out travel as an event
                from serve_app.http_errors import error_facts

                status, err, _ = error_facts(exc, request_id)
                yield f"event: error\ndata: {json.dumps({'status': status, 'error': err})}\n\n"
            finally:
                self.inflight -= 1

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"X-Request-ID": request_id, "Cache-Control": "no-cache"})

    @http_app.post("/v1/jobs/{job_type}", tags=["native"], summary="Run a custom job type")
    async def run_job(self, job_type: str, request: Request, body: JobRequest):
        request_id = self._request_id(request)
        try:
            async with self._accepting():
                mode = self._select(body.mode)
                if job_type in ("txt2img", "img2img"):
                    body_model = Txt2ImgRequest if job_type == "txt2img" else Img2ImgRequest
                    from serve_app.generation_request import parse_request

                    resolve_request(parse_request(body_model, body.payload), mode.config, mode.family)
                started = time.perf_counter()
                result = await self._handle(mode).run.remote(job_type, body.payload, request_id)
        except Exception as exc:
            return error_response(exc, request_id)
        if hasattr(result, "images"):
            result = generation_json(result, mode, request_id, time.perf_counter() - started)
        return {"request_id": request_id, "mode": mode.name, "job_type": job_type, "result": result}

    @http_app.get("/v1/modes", tags=["native"], summary="Every mode with its state and VRAM")
    async def list_modes(self):
        stats = await self.registry.stats.remote() if self.registry is not None else {"devices": [], "replicas": {}}
        models = [m for d in stats["devices"] for m in d["models"]]
        out = []
        for name, mode in self.catalog.modes.items():
            loaded = [m for m in models if m["mode"] == name]
            replicas = [r for r in stats["replicas"].values() if r["mode"] == name]
            state = "ready" if loaded else ("loading" if any(r.get("state") == "loading" for r in replicas)
                                            else "failed" if any(r.get("state") == "failed" for r in replicas)
                                            else "cold")
            out.append({
                "name": name, "family": mode.family.value, "checkpoint": mode.config.checkpoint,
                "format": mode.info.format.value, "aliases": mode.config.aliases, "default": name == self.current_default,
                "state": state, "replicas": len(replicas), "loaded_replicas": len(loaded),
                "measured_bytes": max((m["measured_bytes"] for m in loaded), default=None),
                "estimated_bytes": mode.estimate_bytes(), "scheduler": mode.config.scheduler,
                "defaults": mode.config.defaults.model_dump(), "limits": mode.config.limits.model_dump(),
                "jobs": [*(["txt2img"] if mode.family.txt2img else []), "img2img", *mode.config.jobs],
            })
        return {"default_mode": self.current_default, "modes": out}

    async def _operator_action(self, name: str, action: str):
        try:
            mode = self.catalog.select(name, param="name")
            return await getattr(self._handle(mode), action).remote()
        except Exception as exc:
            return error_response(exc)

    @http_app.post("/v1/modes/{name}/load", tags=["native"], summary="Load a mode (no-op when loaded)")
    async def load_mode(self, name: str):
        return await self._operator_action(name, "load")

    @http_app.post("/v1/modes/{name}/unload", tags=["native"], summary="Unload a mode on one replica")
    async def unload_mode(self, name: str):
        return await self._operator_action(name, "unload")

    @http_app.get("/v1/registry", tags=["native"], summary="Per-device VRAM and the models on it")
    async def registry_stats(self):
        if self.registry is None:
            return {"devices": [], "replicas": {}, "draining": self.draining}
        return await self.registry.stats.remote()

    @http_app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz(self):
        return {"status": "ok"}

    @http_app.get("/readyz", tags=["ops"], summary="Readiness: the default mode can serve")
    async def readyz(self):
        await self._ensure_poller()
        if self.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        default = self.catalog.modes[self.current_default]
        if default.config.load_on_start:
            modes = (await self.list_modes())["modes"]
            state = next(m["state"] for m in modes if m["name"] == default.name)
            if state != "ready":
                return JSONResponse({"status": "not_ready", "default_mode": default.name, "state": state},
                                    status_code=503)
        return {"status": "ready", "default_mode": default.name}


@http_app.exception_handler(FastAPIValidationError)
async def _validation_error(request: Request, exc: FastAPIValidationError):
    if "/sdapi/" in request.url.path:
        return a1111_error(exc)
    if "/v1/images/" in request.url.path:
        return openai_error(exc)
    return error_response(exc)


@http_app.exception_handler(DreamLabError)
async def _dreamlab_error(request: Request, exc: DreamLabError):
    return error_response(exc)


# Applied at import so every replica process (which re-imports this module) wires the routes to the class.
RouterIngress = serve.ingress(http_app)(Router)
