"""AUTOMATIC1111 `sdapi` front end: modes appear as checkpoints.

Generation goes through the mode's streaming generation, so the router sees every denoising step: that
feed answers `/sdapi/v1/progress` (for the generations this router replica runs; one router replica by
default).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from deployments.protocol import GenerationResult
from deployments.router.access_control import ADMIN, CLIENT, require_admin
from deployments.router.gateway import Gateway, off_loop
from deployments.router.gateway_dependency import GatewayDep
from deployments.router.http_app import OffLoopJsonRoute, current_request_id
from deployments.router.mode_refresh import RefresherDep
from deployments.router.request_context import current_caller
from serve_app.api.http_errors import FrontEnd, error_responses
from serve_app.api.images.png_info import png_info
from serve_app.api.images.upscaling import PIXEL_UPSCALERS, png_b64, upscale_image
from serve_app.api.mode_catalog import ServedMode
from serve_app.api.schemas.a1111 import (
    A1111_HR_UPSCALERS,
    A1111_SAMPLER_ALIASES,
    A1111_SAMPLERS,
    A1111Embedding,
    A1111Embeddings,
    A1111ExtraResponse,
    A1111ExtraSingleImage,
    A1111GenerationResponse,
    A1111Img2ImgRequest,
    A1111LatentUpscaleMode,
    A1111Lora,
    A1111Options,
    A1111PngInfoRequest,
    A1111PngInfoResponse,
    A1111Progress,
    A1111ProgressState,
    A1111Sampler,
    A1111Scheduler,
    A1111SdModel,
    A1111Txt2ImgRequest,
    A1111Upscaler,
    A1111Vae,
    without_hash,
)
from serve_app.core.errors import GenerationCancelledError, RequestValidationError, UnknownModeError
from serve_app.model.generation.a1111_samplers import A1111_SCHEDULE_TYPES
from serve_app.model.generation.job import random_seed
from serve_app.model.inspection.adapter_inspect import AdapterKind
from serve_app.model.inspection.model_hashes import cached_sha256, short_hash

A1111: list[str | Enum] = [FrontEnd.A1111.value]
CHECKPOINT_PARAM = "override_settings.sd_model_checkpoint"
GENERATION_ERRORS = error_responses(FrontEnd.A1111, 404, 422, 503, 507)
ERRORS = error_responses(FrontEnd.A1111)


def checkpoint_sha256(mode: ServedMode) -> str | None:
    """A1111's model hash (SHA-256 of the file), once a replica has computed it after its load; the router
    never reads the checkpoint itself."""
    return cached_sha256(mode.info.path)


@dataclass
class LiveProgress:
    step: int
    total: int
    started: float
    owner: str  # the caller (key or address): progress, interrupt and skip act on the caller's own only
    eta_s: float | None = None
    interrupted: bool = False
    skipped: bool = False


# server-chosen key -> a running A1111 batch, for /sdapi/v1/progress, /interrupt and /skip (a client's
# X-Request-Id may repeat, so it is not the key)
ProgressBoard = dict[str, LiveProgress]


async def progress_board(request: Request) -> ProgressBoard:
    """This app's board of running A1111 generations (`ingress.create_http_app` sets one up)."""
    board: ProgressBoard = request.app.state.a1111_progress
    return board


BoardDep = Annotated[ProgressBoard, Depends(progress_board)]


def _callers_own(board: ProgressBoard) -> ProgressBoard:
    """The running generations of the request's caller: progress, interrupt and skip never reach another's."""
    caller = current_caller().id
    return {key: p for key, p in board.items() if p.owner == caller}
router = APIRouter(route_class=OffLoopJsonRoute)


def _a1111_title(mode: ServedMode) -> str:
    """The mode name itself: clients (webuiapi's util_set_model) then match it exactly. A1111-style
    titles with a hash suffix (`sd1 [0123456789]`) are accepted too."""
    return mode.name


def _a1111_mode(gw: Gateway, checkpoint: str | None, param: str = CHECKPOINT_PARAM) -> ServedMode:
    """A mode from an A1111 checkpoint title, model name, file name, mode name or alias."""
    if not checkpoint:
        return gw.catalog.modes[gw.current_default]
    name = without_hash(checkpoint)
    by_file = {Path(m.config.checkpoint).name: m.name for m in gw.catalog.modes.values()}
    for candidate in (name, by_file.get(name), Path(name).name.removesuffix(".safetensors")):
        if candidate:
            try:
                return gw.catalog.select(candidate, param=param)
            except UnknownModeError:
                continue
    titles = ", ".join(_a1111_title(m) for m in gw.catalog.modes.values())
    raise UnknownModeError(f"checkpoint {checkpoint[:80]!r} not found; available: {titles}", param=param)


async def _run_with_progress(gw: Gateway, board: ProgressBoard, mode: ServedMode, body: A1111Txt2ImgRequest,
                             seed: int, subseed: int) -> GenerationResult | None:
    """Run one batch through the streaming generation, recording its steps for /sdapi/v1/progress; None when
    the caller skipped it (/sdapi/v1/skip). Leaving the stream stops the replica at its next step."""
    native = body.to_native(mode.name)
    native.seed, native.subseed = seed, subseed
    if native.refiner is not None:  # two stages on two modes: not streamed, no live progress
        return (await gw.generate(native, mode)).result
    request = await gw.resolve(native, mode)
    key = uuid.uuid4().hex
    progress = board[key] = LiveProgress(0, request.steps, time.time(), current_caller().id)
    try:
        async with contextlib.aclosing(gw.generate_stream(mode, request)) as stream:
            async for event in stream:
                if isinstance(event, GenerationResult):
                    return event
                progress.step, progress.total, progress.eta_s = event.step, event.total, event.eta_s
                if progress.interrupted or progress.skipped:
                    break
        if progress.interrupted:
            raise GenerationCancelledError("interrupted by /sdapi/v1/interrupt")
        if progress.skipped:
            return None
        raise RuntimeError("the generation stream ended without a result")
    finally:
        board.pop(key, None)


async def _a1111_generate(gw: Gateway, board: ProgressBoard, body: A1111Txt2ImgRequest) -> A1111GenerationResponse:
    async with gw.accepting():
        mode = _a1111_mode(gw, body.checkpoint())
        count = body.batch_size * body.n_iter
        first_seed = body.seed if body.seed != -1 else random_seed(count)
        first_subseed = body.subseed if body.subseed != -1 else random_seed(count)
        images: list[str] = []
        infotexts: list[str] = []
        seeds: list[int] = []
        result = None
        for batch in range(body.n_iter):
            made = await _run_with_progress(gw, board, mode, body, first_seed + batch * body.batch_size,
                                            first_subseed + batch * body.batch_size)
            if made is None:  # skipped: on to the next batch
                continue
            result = made
            images += [base64.b64encode(img.data).decode() for img in result.images]
            infotexts += [img.infotext or "" for img in result.images]
            seeds += [img.seed for img in result.images]
    if result is None:
        raise GenerationCancelledError("every batch was skipped (/sdapi/v1/skip)")
    info = {
        "prompt": body.prompt, "negative_prompt": body.negative_prompt or "", "seed": seeds[0],
        "all_seeds": seeds, "all_prompts": [body.prompt] * len(seeds), "width": result.width,
        "subseed": first_subseed, "all_subseeds": [first_subseed + i for i in range(len(seeds))],
        "subseed_strength": body.subseed_strength,
        "height": result.height, "steps": result.steps, "sampler_name": body.sampler_name or result.scheduler,
        "cfg_scale": body.cfg_scale, "batch_size": body.batch_size, "n_iter": body.n_iter,
        "sd_model_name": mode.name, "sd_model_hash": result.model_hash,
        "job_id": current_request_id(), "infotexts": infotexts,
    }
    return A1111GenerationResponse(images=images, parameters=body.model_dump(), info=json.dumps(info))


@router.post("/sdapi/v1/txt2img", tags=A1111, dependencies=CLIENT, summary="A1111: text to image",
             response_model=A1111GenerationResponse, responses=GENERATION_ERRORS)
async def sdapi_txt2img(gw: GatewayDep, board: BoardDep, body: A1111Txt2ImgRequest) -> A1111GenerationResponse:
    return await _a1111_generate(gw, board, body)


@router.post("/sdapi/v1/img2img", tags=A1111, dependencies=CLIENT, summary="A1111: image to image",
             response_model=A1111GenerationResponse, responses=GENERATION_ERRORS)
async def sdapi_img2img(gw: GatewayDep, board: BoardDep, body: A1111Img2ImgRequest) -> A1111GenerationResponse:
    return await _a1111_generate(gw, board, body)


@router.get("/sdapi/v1/sd-models", tags=A1111, dependencies=CLIENT, summary="A1111: checkpoints (the modes)",
            response_model=list[A1111SdModel], responses=ERRORS)
async def sdapi_sd_models(gw: GatewayDep) -> list[A1111SdModel]:
    hashes = {name: checkpoint_sha256(m) for name, m in gw.catalog.modes.items()}  # one cache read per mode
    return [A1111SdModel(title=_a1111_title(m), model_name=m.name, hash=short_hash(hashes[m.name]),
                         sha256=hashes[m.name], filename=m.config.checkpoint)  # as configured: no server paths
            for m in gw.catalog.modes.values()]


@router.get("/sdapi/v1/loras", tags=A1111, dependencies=CLIENT, summary="A1111: LoRAs (use <lora:name:w>)",
            response_model=list[A1111Lora], responses=ERRORS)
async def sdapi_loras(gw: GatewayDep) -> list[A1111Lora]:
    return [A1111Lora(name=a.name, alias=a.name, path=gw.adapters.relative(a.path),
                      metadata={"family": a.family.value if a.family else None, "format": a.format.value,
                                "rank": a.rank})
            for a in gw.adapters.of_kind(AdapterKind.LORA)]


@router.post("/sdapi/v1/refresh-loras", tags=A1111, dependencies=CLIENT,
             summary="A1111: rescan the LoRAs (answers the new list)", response_model=list[A1111Lora],
             responses=ERRORS)
async def sdapi_refresh_loras(gw: GatewayDep) -> list[A1111Lora]:
    await asyncio.to_thread(gw.adapters.refresh)
    return await sdapi_loras(gw)


@router.post("/sdapi/v1/refresh-checkpoints", tags=A1111, dependencies=ADMIN, response_model=None,
             summary="A1111: rescan MODEL_ROOT (discovery): new checkpoints become modes, removed ones go",
             responses={**error_responses(FrontEnd.A1111, 503),
                        200: {"content": {"application/json": {"schema": {"type": "null"}}}}})
async def sdapi_refresh_checkpoints(refresher: RefresherDep) -> None:
    """An operator action (the admin key, when keys are on); `POST /v1/modes/refresh` answers what changed."""
    if refresher is not None:
        await refresher.refresh()
    return None


@router.get("/sdapi/v1/embeddings", tags=A1111, dependencies=CLIENT,
            summary="A1111: textual-inversion embeddings (name one in a prompt to use it)",
            response_model=A1111Embeddings, responses=ERRORS)
async def sdapi_embeddings(gw: GatewayDep) -> A1111Embeddings:
    await gw.ensure_poller()
    family = gw.catalog.modes[gw.current_default].family
    listed: dict[bool, dict[str, A1111Embedding]] = {True: {}, False: {}}
    for a in gw.adapters.of_kind(AdapterKind.EMBEDDING):
        listed[a.family is family][a.name] = A1111Embedding(
            sd_checkpoint_name=a.family.value if a.family else None, shape=a.width or 0, vectors=a.vectors or 0)
    return A1111Embeddings(loaded=listed[True], skipped=listed[False])


@router.get("/sdapi/v1/sd-vae", tags=A1111, dependencies=CLIENT,
            summary="A1111: VAEs (choose one with override_settings.sd_vae)", response_model=list[A1111Vae],
            responses=ERRORS)
async def sdapi_sd_vae(gw: GatewayDep) -> list[A1111Vae]:
    return [A1111Vae(model_name=a.name, filename=gw.adapters.relative(a.path))
            for a in gw.adapters.of_kind(AdapterKind.VAE)]


@router.get("/sdapi/v1/upscalers", tags=A1111, dependencies=CLIENT,
            summary="A1111: upscalers really offered (pixels: extras and hires fix)",
            response_model=list[A1111Upscaler], responses=ERRORS)
async def sdapi_upscalers() -> list[A1111Upscaler]:
    return [A1111Upscaler(name=name) for name in PIXEL_UPSCALERS]


@router.get("/sdapi/v1/latent-upscale-modes", tags=A1111, dependencies=CLIENT,
            summary="A1111: latent upscalers of the hires fix", response_model=list[A1111LatentUpscaleMode],
            responses=ERRORS)
async def sdapi_latent_upscale_modes() -> list[A1111LatentUpscaleMode]:
    return [A1111LatentUpscaleMode(name=name) for name in A1111_HR_UPSCALERS if name.startswith("Latent")]


@router.post("/sdapi/v1/extra-single-image", tags=A1111, dependencies=CLIENT,
             summary="A1111: upscale one image (Lanczos or nearest)", response_model=A1111ExtraResponse,
             responses=error_responses(FrontEnd.A1111, 413, 422, 503))
async def sdapi_extra_single_image(gw: GatewayDep, body: A1111ExtraSingleImage) -> A1111ExtraResponse:
    limits = gw.catalog.modes[gw.current_default].config.limits
    size = (body.upscaling_resize_w, body.upscaling_resize_h) if body.resize_mode == 1 else None
    async with gw.accepting():
        data = await off_loop(upscale_image, body.image, body.upscaler_1, None if size else body.upscaling_resize,
                              size, limits)
    return A1111ExtraResponse(html_info="", image=png_b64(data))


@router.post("/sdapi/v1/png-info", tags=A1111, dependencies=CLIENT,
             summary="A1111: the generation parameters an image carries", response_model=A1111PngInfoResponse,
             responses=error_responses(FrontEnd.A1111, 413, 422))
async def sdapi_png_info(gw: GatewayDep, body: A1111PngInfoRequest) -> A1111PngInfoResponse:
    limits = gw.catalog.modes[gw.current_default].config.limits
    text, fields = await off_loop(png_info, body.image, limits)
    return A1111PngInfoResponse(info=text, items={"parameters": text} if text else {}, parameters=fields)


@router.get("/sdapi/v1/options", tags=A1111, dependencies=CLIENT,
            summary="A1111: options", response_model=A1111Options,
            responses=ERRORS)
async def sdapi_get_options(gw: GatewayDep) -> A1111Options:
    await gw.ensure_poller()
    mode = gw.catalog.modes[gw.current_default]
    return A1111Options(sd_model_checkpoint=_a1111_title(mode), sd_checkpoint_hash=checkpoint_sha256(mode),
                        samples_format="png")


@router.post("/sdapi/v1/options", tags=A1111, dependencies=CLIENT, response_model=None,
             summary="A1111: set options (`sd_model_checkpoint` switches the default mode)",
             responses={**error_responses(FrontEnd.A1111, 404, 503, 507),
                        200: {"content": {"application/json": {"schema": {"type": "null"}}}}})
async def sdapi_set_options(gw: GatewayDep, request: Request, options: dict[str, Any]) -> None:
    """Only `sd_model_checkpoint` is used: switching the application's default mode is an operator
    action (the admin key, when keys are on), and only to a mode that can do txt2img."""
    if "sd_model_checkpoint" not in options:
        return None
    await gw.ensure_poller()
    mode = _a1111_mode(gw, str(options["sd_model_checkpoint"]), param="sd_model_checkpoint")
    if not mode.family.txt2img:
        raise RequestValidationError(
            f"`sd_model_checkpoint` {mode.name!r} is an {mode.family.value} checkpoint, which only does img2img: "
            "it cannot be the default", param="sd_model_checkpoint")
    if mode.name != gw.current_default:  # switching to the current mode is a no-op
        require_admin(request)
        await gw.set_default_mode(mode.name)
        await gw.workers.load(mode.name)
    return None


@router.get("/sdapi/v1/progress", tags=A1111, dependencies=CLIENT, summary="A1111: progress of the running job",
            response_model=A1111Progress, responses=ERRORS)
async def sdapi_progress(board: BoardDep) -> A1111Progress:
    board = _callers_own(board)
    if not board:
        return A1111Progress(progress=0.0, eta_relative=0.0, state=A1111ProgressState(
            skipped=False, interrupted=False, job="", job_count=0, job_timestamp="0", job_no=0, sampling_step=0,
            sampling_steps=0))
    job, p = max(board.items(), key=lambda kv: kv[1].started)
    return A1111Progress(
        progress=round(p.step / max(1, p.total), 4), eta_relative=p.eta_s or 0.0,
        state=A1111ProgressState(
            skipped=p.skipped, interrupted=p.interrupted, job=job, job_count=len(board),
            job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(p.started)), job_no=0,
            sampling_step=p.step, sampling_steps=p.total))


@router.post("/sdapi/v1/interrupt", tags=A1111, dependencies=CLIENT,
             summary="A1111: stop the caller's running generations", responses=ERRORS)
async def sdapi_interrupt(board: BoardDep) -> dict[str, Any]:
    """Stops the caller's own running generations (never another client's) at their next step."""
    for progress in _callers_own(board).values():
        progress.interrupted = True
    return {}


@router.post("/sdapi/v1/skip", tags=A1111, dependencies=CLIENT,
             summary="A1111: skip the caller's running batch (the next batch runs)", responses=ERRORS)
async def sdapi_skip(board: BoardDep) -> dict[str, Any]:
    for progress in _callers_own(board).values():
        progress.skipped = True
    return {}


@router.get("/sdapi/v1/samplers", tags=A1111, dependencies=CLIENT,
            summary="A1111: samplers", response_model=list[A1111Sampler],
            responses=ERRORS)
async def sdapi_samplers() -> list[A1111Sampler]:
    return [A1111Sampler(name=name, aliases=A1111_SAMPLER_ALIASES[name], options={}) for name in A1111_SAMPLERS]


@router.get("/sdapi/v1/schedulers", tags=A1111, dependencies=CLIENT, summary="A1111: schedule types",
            response_model=list[A1111Scheduler], responses=ERRORS)
async def sdapi_schedulers() -> list[A1111Scheduler]:
    return [A1111Scheduler(name=name, label=label, default_rho=rho, need_inner_model=False)
            for name, (label, rho) in A1111_SCHEDULE_TYPES.items()]


@router.get("/internal/ping", tags=A1111, summary="A1111: ping", response_model=dict[str, Any], responses=ERRORS)
async def internal_ping() -> dict[str, Any]:
    return {}
