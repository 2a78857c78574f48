"""AUTOMATIC1111 `sdapi` front end, a mixin of the Router: modes appear as checkpoints.

Generation goes through the mode's streaming job, so the router sees every denoising step: that feed
answers `/sdapi/v1/progress` (for the generations this router replica runs; one router replica by default).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from serve_app.compat_schemas import A1111_SAMPLER_ALIASES, A1111_SAMPLERS, A1111Img2ImgRequest, A1111Txt2ImgRequest
from serve_app.errors import UnknownModeError
from serve_app.generation_request import MAX_SEED
from serve_app.http_errors import error_facts
from serve_app.mode_catalog import ServedMode
from deployments.http_app import http_app

CHECKPOINT_PARAM = "override_settings.sd_model_checkpoint"


def a1111_error(exc: BaseException, request_id: str = "-") -> JSONResponse:
    """A1111's error shape: `{error, detail, body, errors}`."""
    status, err, headers = error_facts(exc, request_id)
    body = {"error": err["type"], "detail": err["message"], "body": "", "errors": err["message"]}
    if err.get("param"):
        body["param"] = err["param"]
    return JSONResponse(body, status_code=status, headers=headers)


def checkpoint_sha256(mode: ServedMode) -> str:
    """A content fingerprint that costs no tensor read: the checkpoint's metadata and size."""
    info = mode.info
    digest = hashlib.sha256(
        f"{info.format.value}|{info.family.value}|{info.param_count}|{info.param_bytes}|{info.file_bytes}|"
        f"{Path(info.path).name}".encode())
    return digest.hexdigest()


class A1111Routes:
    """Routes of the A1111 API. Needs the Router's catalog, handles, admission control and default mode."""

    @staticmethod
    def _a1111_title(mode: ServedMode) -> str:
        """The mode name itself: clients (webuiapi's util_set_model) then match it exactly. A1111-style
        titles with a hash suffix (`sd1 [0123456789]`) are accepted too."""
        return mode.name

    def _a1111_mode(self, checkpoint: str | None, param: str = CHECKPOINT_PARAM) -> ServedMode:
        """A mode from an A1111 checkpoint title, model name, file name, mode name or alias."""
        if not checkpoint:
            return self.catalog.modes[self.current_default]
        name = re.sub(r"\s*\[[0-9a-f]+\]$", "", checkpoint.strip())
        by_file = {Path(m.config.checkpoint).name: m.name for m in self.catalog.modes.values()}
        for candidate in (name, by_file.get(name), Path(name).name.removesuffix(".safetensors")):
            if candidate:
                try:
                    return self.catalog.select(candidate, param=param)
                except UnknownModeError:
                    continue
        titles = ", ".join(self._a1111_title(m) for m in self.catalog.modes.values())
        raise UnknownModeError(f"checkpoint {checkpoint!r} not found; available: {titles}", param=param)

    async def _run_with_progress(self, mode: ServedMode, native, job: str, request_id: str):
        """Run one generation through the streaming job, recording its steps for /sdapi/v1/progress."""
        payload = self._worker_payload(mode, native)
        started = time.time()
        self.live_progress[request_id] = {"step": 0, "total": native.steps or mode.config.defaults.steps,
                                          "started": started, "eta_s": None}
        try:
            gen = self._handle(mode).options(stream=True).run_stream.remote(job, payload, request_id)
            async for event in gen:
                if event["event"] == "progress":
                    self.live_progress[request_id].update(step=event["step"], total=event["total"],
                                                          eta_s=event["eta_s"])
                else:
                    return event["result"]
            raise RuntimeError("the generation stream ended without a result")
        finally:
            self.live_progress.pop(request_id, None)

    async def _a1111_generate(self, request: Request, body: A1111Txt2ImgRequest, job: str):
        request_id = self._request_id(request)
        try:
            async with self._accepting():
                mode = self._a1111_mode(body.checkpoint())
                first_seed = body.seed if body.seed != -1 else secrets.randbelow(MAX_SEED - 4096)
                images: list[str] = []
                seeds: list[int] = []
                for batch in range(body.n_iter):
                    native = body.to_native(mode.name)
                    native.seed = first_seed + batch * body.batch_size
                    result = await self._run_with_progress(mode, native, job, request_id)
                    images += [base64.b64encode(img.data).decode() for img in result.images]
                    seeds += [img.seed for img in result.images]
        except Exception as exc:
            return a1111_error(exc, request_id)
        info = {
            "prompt": body.prompt, "negative_prompt": body.negative_prompt or "", "seed": seeds[0],
            "all_seeds": seeds, "all_prompts": [body.prompt] * len(seeds), "width": result.width,
            "height": result.height, "steps": result.steps, "sampler_name": body.sampler_name or result.scheduler,
            "cfg_scale": body.cfg_scale, "batch_size": body.batch_size, "n_iter": body.n_iter,
            "sd_model_name": mode.name, "sd_model_hash": checkpoint_sha256(mode)[:10], "job_id": request_id,
        }
        return {"images": images, "parameters": body.model_dump(), "info": json.dumps(info)}

    @http_app.post("/sdapi/v1/txt2img", tags=["automatic1111"], summary="A1111: text to image")
    async def sdapi_txt2img(self, request: Request, body: A1111Txt2ImgRequest):
        return await self._a1111_generate(request, body, "txt2img")

    @http_app.post("/sdapi/v1/img2img", tags=["automatic1111"], summary="A1111: image to image")
    async def sdapi_img2img(self, request: Request, body: A1111Img2ImgRequest):
        return await self._a1111_generate(request, body, "img2img")

    @http_app.get("/sdapi/v1/sd-models", tags=["automatic1111"], summary="A1111: checkpoints (the modes)")
    async def sdapi_sd_models(self):
        return [{"title": self._a1111_title(m), "model_name": m.name, "hash": checkpoint_sha256(m)[:10],
                 "sha256": checkpoint_sha256(m), "filename": m.info.path, "config": None}
                for m in self.catalog.modes.values()]

    @http_app.get("/sdapi/v1/options", tags=["automatic1111"], summary="A1111: options")
    async def sdapi_get_options(self):
        mode = self.catalog.modes[self.current_default]
        return {"sd_model_checkpoint": self._a1111_title(mode), "sd_checkpoint_hash": checkpoint_sha256(mode),
                "samples_format": "png"}

    @http_app.post("/sdapi/v1/options", tags=["automatic1111"],
                   summary="A1111: set options (`sd_model_checkpoint` switches the default mode)")
    async def sdapi_set_options(self, options: dict[str, Any]):
        try:
            if "sd_model_checkpoint" not in options:
                return None
            mode = self._a1111_mode(str(options["sd_model_checkpoint"]), param="sd_model_checkpoint")
            if mode.name != self.current_default:  # switching to the current mode is a no-op
                await self.set_default_mode(mode.name)
                await self._handle(mode).load.remote()
        except Exception as exc:
            return a1111_error(exc)
        return None

    @http_app.get("/sdapi/v1/progress", tags=["automatic1111"], summary="A1111: progress of the running job")
    async def sdapi_progress(self):
        if not self.live_progress:
            return {"progress": 0.0, "eta_relative": 0.0, "current_image": None, "textinfo": None,
                    "state": {"skipped": False, "interrupted": False, "job": "", "job_count": 0,
                              "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}}
        job, p = max(self.live_progress.items(), key=lambda kv: kv[1]["started"])
        total = max(1, p["total"])
        return {"progress": round(p["step"] / total, 4), "eta_relative": p["eta_s"] or 0.0, "current_image": None,
                "textinfo": None,
                "state": {"skipped": False, "interrupted": False, "job": job, "job_count": len(self.live_progress),
                          "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(p["started"])),
                          "job_no": 0, "sampling_step": p["step"], "sampling_steps": p["total"]}}

    @http_app.get("/sdapi/v1/samplers", tags=["automatic1111"], summary="A1111: samplers")
    async def sdapi_samplers(self):
        return [{"name": name, "aliases": A1111_SAMPLER_ALIASES[name], "options": {}} for name in A1111_SAMPLERS]

    @http_app.get("/sdapi/v1/schedulers", tags=["automatic1111"], summary="A1111: schedule types")
    async def sdapi_schedulers(self):
        return [{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1.0,
                 "need_inner_model": False},
                {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False}]

    @http_app.get("/internal/ping", tags=["automatic1111"], summary="A1111: ping")
    async def internal_ping(self):
        return {}
