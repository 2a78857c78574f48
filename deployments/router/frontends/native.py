"""Routes of the native API (`/v1/...`) and the operations routes (`/healthz`, `/readyz`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from enum import Enum
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from deployments.protocol import GenerationResult, LoadAnswer, ModelState, RegistryStats, Tier, UnloadAnswer
from deployments.router.access_control import ADMIN, CLIENT
from deployments.router.gateway import Gateway, Generated
from deployments.router.gateway_dependency import GatewayDep
from deployments.router.http_app import OffLoopJsonRoute, current_request_id
from deployments.router.mode_refresh import RefresherDep
from deployments.router.registry_view import redacted
from deployments.router.request_context import current_caller, current_server_id
from serve_app.api.http_errors import FrontEnd, error_facts, error_responses
from serve_app.api.schemas.native import (
    IMAGE_CONTENT,
    AdaptersResponse,
    GenerationResponse,
    HealthResponse,
    Img2ImgJobRequest,
    Img2ImgRequest,
    InpaintJobRequest,
    InpaintRequest,
    JobRequest,
    JobResponse,
    ModeOut,
    ModesRefreshResponse,
    ModesResponse,
    Txt2ImgJobRequest,
    Txt2ImgRequest,
    generation_response,
)
from serve_app.model.families import Family
from serve_app.model.generation.schedulers import samplers_for, schedule_types_for

logger = logging.getLogger(__name__)

NATIVE: list[str | Enum] = [FrontEnd.NATIVE.value]
OPS: list[str | Enum] = [FrontEnd.OPS.value]
GENERATION_ERRORS = error_responses(FrontEnd.NATIVE, 404, 422, 503, 507)
_PNG_ONE = {"content": IMAGE_CONTENT, "description": "With `Accept: image/png` and one image: the image bytes."}


def _native_json(done: Generated) -> GenerationResponse:
    return generation_response(done.result, done.mode.name, done.mode.family.value, current_request_id(),
                               done.total_s)

router = APIRouter(route_class=OffLoopJsonRoute)


async def _native_generation(gw: Gateway, request: Request, body: Txt2ImgRequest) -> Response | GenerationResponse:
    async with gw.accepting():
        done = await gw.generate(body)
    if "image/" in request.headers.get("accept", "") and len(done.result.images) == 1:
        img = done.result.images[0]
        return Response(img.data, media_type=f"image/{img.format}", headers={"X-Seed": str(img.seed)})
    # serialized here, once (pydantic-core): FastAPI would validate the response model again and then encode it
    return Response(_native_json(done).model_dump_json(exclude_none=True), media_type="application/json")


@router.post("/v1/txt2img", tags=NATIVE, dependencies=CLIENT,
             summary="Text to image", response_model=GenerationResponse,
             response_model_exclude_none=True, responses={**GENERATION_ERRORS, 200: _PNG_ONE})
async def txt2img(gw: GatewayDep, request: Request, body: Txt2ImgRequest) -> Any:
    """`Accept: image/png` with one image returns the PNG bytes instead of JSON."""
    return await _native_generation(gw, request, body)


@router.post("/v1/img2img", tags=NATIVE, dependencies=CLIENT,
             summary="Image to image", response_model=GenerationResponse,
             response_model_exclude_none=True, responses={**GENERATION_ERRORS, 200: _PNG_ONE})
async def img2img(gw: GatewayDep, request: Request, body: Img2ImgRequest) -> Any:
    return await _native_generation(gw, request, body)


@router.post("/v1/inpaint", tags=NATIVE, dependencies=CLIENT,
             summary="Inpainting and outpainting (image + mask)", response_model=GenerationResponse,
             response_model_exclude_none=True, responses={**GENERATION_ERRORS, 200: _PNG_ONE})
async def inpaint(gw: GatewayDep, request: Request, body: InpaintRequest) -> Any:
    """Repaint `image` where `mask` is white; every mode can (an inpainting checkpoint does it best)."""
    return await _native_generation(gw, request, body)


@router.post("/v1/txt2img/stream", tags=NATIVE, dependencies=CLIENT,
             summary="Text to image with live progress (SSE)",
             response_class=StreamingResponse, responses={
                 **GENERATION_ERRORS,
                 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description":
                       "`progress` events ({step, total, elapsed_s, eta_s}), then `result` (the "
                       "txt2img response) or `error` ({status, error})."}})
async def txt2img_stream(gw: GatewayDep, body: Txt2ImgRequest) -> StreamingResponse:
    """Server-sent events: `progress` (step, total, elapsed_s, eta_s) per step, then `result` or `error`."""
    await gw.refuse_if_draining()
    mode = gw.select(body.mode)
    request = await gw.resolve(body, mode)
    request_id, started = current_request_id(), time.perf_counter()

    async def events() -> AsyncIterator[str]:
        gw.inflight += 1  # counted here: a body never iterated (client gone first) is never counted
        try:
            async for event in gw.generate_stream(mode, request):
                if isinstance(event, GenerationResult):
                    done = Generated(mode, event, time.perf_counter() - started)
                    data = _native_json(done).model_dump(mode="json", exclude_none=True)
                    yield f"event: result\ndata: {json.dumps(data)}\n\n"
                else:
                    yield f"event: progress\ndata: {json.dumps(event.__dict__)}\n\n"
        except Exception as exc:  # errors after the 200 went out travel as an event
            f = error_facts(exc, request_id)
            error = {"type": f.type, "message": f.message, "param": f.param}
            yield f"event: error\ndata: {json.dumps({'status': f.status, 'error': error})}\n\n"
        finally:
            gw.release()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _generation_job(gw: Gateway, job_type: str, mode_name: str | None, body: Txt2ImgRequest) -> JobResponse:
    async with gw.accepting():
        mode = gw.select(mode_name)
        result = _native_json(await gw.generate(body, mode)).model_dump(exclude_none=True)
    return JobResponse(request_id=current_request_id(), mode=mode.name, job_type=job_type, result=result)


@router.post("/v1/jobs/txt2img", tags=NATIVE, dependencies=CLIENT, summary="Text to image, as a job",
             response_model=JobResponse, responses=GENERATION_ERRORS)
async def txt2img_job(gw: GatewayDep, body: Txt2ImgJobRequest) -> JobResponse:
    """`payload` is the body of `/v1/txt2img`; `result` is its response."""
    return await _generation_job(gw, "txt2img", body.mode, body.payload)


@router.post("/v1/jobs/img2img", tags=NATIVE, dependencies=CLIENT, summary="Image to image, as a job",
             response_model=JobResponse, responses=GENERATION_ERRORS)
async def img2img_job(gw: GatewayDep, body: Img2ImgJobRequest) -> JobResponse:
    """`payload` is the body of `/v1/img2img`; `result` is its response."""
    return await _generation_job(gw, "img2img", body.mode, body.payload)


@router.post("/v1/jobs/inpaint", tags=NATIVE, dependencies=CLIENT, summary="Inpainting, as a job",
             response_model=JobResponse, responses=GENERATION_ERRORS)
async def inpaint_job(gw: GatewayDep, body: InpaintJobRequest) -> JobResponse:
    """`payload` is the body of `/v1/inpaint`; `result` is its response."""
    return await _generation_job(gw, "inpaint", body.mode, body.payload)


@router.post("/v1/jobs/{job_type}", tags=NATIVE, dependencies=CLIENT,
             summary="Run a custom job type", response_model=JobResponse,
             responses=error_responses(FrontEnd.NATIVE, 404, 422, 500, 503, 507))
async def run_job(gw: GatewayDep, job_type: str, body: JobRequest) -> JobResponse:
    """A custom job of the mode (its `jobs:`); `/v1/jobs/txt2img`, `img2img` and `inpaint` (their own routes)
    take a generation request as payload."""
    async with gw.accepting():
        mode = gw.select(body.mode)
        async with gw.dispatch(mode):
            result = await gw.workers.run_job(mode.name, job_type, body.payload, current_server_id())
    return JobResponse(request_id=current_request_id(), mode=mode.name, job_type=job_type, result=result)


def family_samplers(family: Family) -> dict[str, list[str]]:
    """The samplers a family takes, each with its schedule types (SD3 / FLUX: flow-matching euler only)."""
    return {name: list(schedule_types_for(name, family)) for name in samplers_for(family)}
READYZ_MAX_AGE_S = 1.0  # probes answer from the router's view at most this old: a probe flood is no registry load


@router.get("/v1/modes", tags=NATIVE, dependencies=CLIENT,
            summary="Every mode with its state and VRAM", response_model=ModesResponse,
            responses=error_responses(FrontEnd.NATIVE))
async def list_modes(gw: GatewayDep) -> ModesResponse:
    return await _modes(gw)


async def _modes(gw: Gateway, max_age_s: float = 0.0) -> ModesResponse:
    await gw.ensure_poller()  # the default mode and the replica counts come with the registry's poll
    stats = await gw.registry_stats(max_age_s)
    models = [m for d in stats.devices for m in d.models]
    in_ram = {m.mode for n in stats.nodes for m in n.models}
    out = []
    for name, mode in gw.catalog.modes.items():
        loaded = [m for m in models if m.mode == name]
        states = {r.state for r in stats.replicas.values() if r.mode == name}
        serving = [m for m in loaded if m.replica not in stats.replicas
                   or stats.replicas[m.replica].state is not ModelState.FAILED]
        state = (ModelState.READY if serving else ModelState.LOADING if ModelState.LOADING in states
                 else ModelState.OFFLOADED if name in in_ram
                 else ModelState.FAILED if ModelState.FAILED in states else ModelState.COLD)
        tier = Tier.VRAM if serving else Tier.RAM if name in in_ram else Tier.DISK
        out.append(ModeOut(
            name=name, family=mode.family.value, variant=mode.info.variant, checkpoint=mode.config.checkpoint,
            format=mode.info.format.value,
            aliases=mode.config.aliases, default=name == gw.current_default, state=state, tier=tier,
            replicas=sum(r.mode == name for r in stats.replicas.values()), loaded_replicas=len(loaded),
            measured_bytes=max((m.measured_bytes for m in loaded), default=None),
            estimated_bytes=mode.estimate_bytes(), scheduler=mode.config.scheduler,
            defaults=mode.config.defaults.model_dump(), limits=mode.config.limits.model_dump(),
            jobs=[*(["txt2img"] if mode.family.txt2img else []), "img2img", "inpaint", *mode.config.jobs],
            queued=gw.queues[name].waiting(), samplers=family_samplers(mode.family)))
    return ModesResponse(default_mode=gw.current_default, modes=out, problems=gw.catalog.problems)


@router.post("/v1/modes/refresh", tags=NATIVE, dependencies=ADMIN,
             summary="Rescan MODEL_ROOT (discovery): new checkpoints become modes, removed ones go",
             response_model=ModesRefreshResponse, responses=error_responses(FrontEnd.NATIVE, 503))
async def refresh_modes(refresher: RefresherDep) -> ModesRefreshResponse:
    return await refresher.refresh() if refresher is not None else ModesRefreshResponse(discover=False)


@router.post("/v1/modes/{name}/load", tags=NATIVE, dependencies=ADMIN, summary="Load a mode (no-op when loaded)",
             response_model=LoadAnswer, responses=error_responses(FrontEnd.NATIVE, 404, 503, 507))
async def load_mode(gw: GatewayDep, name: str) -> LoadAnswer:
    mode = gw.catalog.select(name, param="name")
    return await gw.workers.load(mode.name)


@router.post("/v1/modes/{name}/unload", tags=NATIVE, dependencies=ADMIN, summary="Unload a mode on one replica",
             response_model=UnloadAnswer, responses=error_responses(FrontEnd.NATIVE, 404, 503))
async def unload_mode(gw: GatewayDep, name: str) -> UnloadAnswer:
    mode = gw.catalog.select(name, param="name")
    return await gw.workers.unload(mode.name)


@router.get("/v1/adapters", tags=NATIVE, dependencies=CLIENT, summary="LoRAs, embeddings and VAEs",
            response_model=AdaptersResponse, responses=error_responses(FrontEnd.NATIVE))
async def list_adapters(gw: GatewayDep) -> AdaptersResponse:
    adapters, problems = gw.adapters.public()
    return AdaptersResponse(adapters=adapters, problems=problems)


@router.get("/v1/registry", tags=NATIVE, dependencies=CLIENT, summary="Per-device VRAM and the models on it",
            response_model=RegistryStats, responses=error_responses(FrontEnd.NATIVE))
async def registry_stats(gw: GatewayDep) -> RegistryStats:
    """Node and replica ids for the admin key only (or when the server has no keys)."""
    stats = await gw.registry_stats()
    return redacted(stats) if gw.access.keys_required and not current_caller().admin else stats


@router.get("/healthz", tags=OPS, summary="Liveness", response_model=HealthResponse,
            response_model_exclude_none=True, responses=error_responses(FrontEnd.OPS))
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get("/readyz", tags=OPS, summary="Readiness: this router can serve (or, with `mode`, that mode is loaded)",
            response_model=HealthResponse, response_model_exclude_none=True,
            responses={**error_responses(FrontEnd.OPS, 404), 503: {"model": HealthResponse}})
async def readyz(gw: GatewayDep, mode: str | None = None) -> Any:
    """Without `mode` (what Kubernetes probes): 200 while this router can serve requests: the registry answers,
    no drain runs, and at least one mode can start (is not failed on every replica). A mode that is cold or was
    evicted still serves: its request waits for the load. With `mode=NAME`: 200 only while that mode is on a
    device (`ready`), else 503 with its state. Answered from the router's view of the registry at most
    `READYZ_MAX_AGE_S` old, so a flood of probes costs the registry one call per second."""
    await gw.ensure_poller()
    if gw.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    named = gw.catalog.select(mode, param="mode") if mode is not None else None
    try:
        modes = (await _modes(gw, READYZ_MAX_AGE_S)).modes
    except Exception as exc:  # the registry restarts or is gone: this router cannot place any load
        logger.warning("readiness: the registry did not answer: %s", exc)
        return JSONResponse({"status": "registry_unreachable"}, status_code=503)
    if named is not None:
        state = next(m.state for m in modes if m.name == named.name)
        if state is not ModelState.READY:
            return JSONResponse({"status": "not_ready", "mode": named.name, "state": state.value}, status_code=503)
        return HealthResponse(status="ready", mode=named.name, state=state)
    if all(m.state is ModelState.FAILED for m in modes):
        return JSONResponse({"status": "not_ready", "default_mode": gw.current_default,
                             "state": ModelState.FAILED.value}, status_code=503)
    return HealthResponse(status="ready", default_mode=gw.current_default)
