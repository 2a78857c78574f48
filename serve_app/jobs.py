"""The job interface of a mode: txt2img, img2img and custom job types registered by name.

A custom job is a function `fn(ctx: JobContext, payload: dict) -> dict` (JSON-able), named in the modes
YAML by import path (`mypkg.jobs:upscale`). It gets the mode's loaded pipelines through `ctx`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serve_app.errors import ConfigError, UnknownJobTypeError
from serve_app.generation_request import Img2ImgRequest, Txt2ImgRequest, parse_request, resolve_request
from serve_app.generation_result import GenerationResult
from serve_app.model_runner import CancelFn, ModelRunner, ProgressFn
from serve_app.pipeline_loader import LoadedPipelines


@dataclass
class JobContext:
    runner: ModelRunner
    progress: ProgressFn | None = None
    cancelled: CancelFn | None = None

    @property
    def pipelines(self) -> LoadedPipelines:
        return self.runner.pipelines()


JobFn = Callable[[JobContext, dict[str, Any]], Any]


def txt2img_job(ctx: JobContext, payload: dict[str, Any]) -> GenerationResult:
    req = parse_request(Txt2ImgRequest, payload)
    return ctx.runner.generate(resolve_request(req, ctx.runner.mode, ctx.runner.family), ctx.progress, ctx.cancelled)


def img2img_job(ctx: JobContext, payload: dict[str, Any]) -> GenerationResult:
    req = parse_request(Img2ImgRequest, payload)
    return ctx.runner.generate(resolve_request(req, ctx.runner.mode, ctx.runner.family), ctx.progress, ctx.cancelled)


BUILTIN_JOBS: dict[str, JobFn] = {"txt2img": txt2img_job, "img2img": img2img_job}


def import_job(name: str, target: str) -> JobFn:
    """Import `package.module:function`; errors name the job and the path."""
    module_name, _, attr = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"jobs.{name}: cannot import {target!r}: {exc}", param=f"jobs.{name}") from exc
    if not callable(fn):
        raise ConfigError(f"jobs.{name}: {target!r} is not callable", param=f"jobs.{name}")
    return fn


class JobRegistry:
    """Job types by name: the built-ins plus the mode's custom ones."""

    def __init__(self, custom: dict[str, str] | None = None) -> None:
        self._jobs: dict[str, JobFn] = dict(BUILTIN_JOBS)
        for name, target in (custom or {}).items():
            self.register(name, import_job(name, target))

    def register(self, name: str, fn: JobFn) -> None:
        self._jobs[name] = fn

    def names(self) -> list[str]:
        return sorted(self._jobs)

    def get(self, name: str) -> JobFn:
        try:
            return self._jobs[name]
        except KeyError:
            raise UnknownJobTypeError(f"unknown job type {name!r}; this mode has: {', '.join(self.names())}",
                                      param="job_type") from None
