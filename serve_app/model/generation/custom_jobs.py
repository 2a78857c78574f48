"""Custom job types of a mode, registered by name.

A custom job is a function `fn(ctx: JobContext, payload: dict) -> JSON-able`, named in the modes YAML by
import path (`mypkg.jobs:upscale`). It gets the mode's loaded pipelines through `ctx`. Generation itself
(txt2img, img2img) is not a job: it has its own typed path (`ModelRunner.generate`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serve_app.core.errors import ConfigError, UnknownJobTypeError
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.loading.pipeline_loader import LoadedPipelines


@dataclass
class JobContext:
    runner: ModelRunner

    @property
    def pipelines(self) -> LoadedPipelines:
        return self.runner.pipelines()


JobFn = Callable[[JobContext, dict[str, Any]], Any]


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
    """A mode's custom job types by name."""

    def __init__(self, custom: dict[str, str] | None = None) -> None:
        self._jobs: dict[str, JobFn] = {}
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
            have = ", ".join(self.names()) or "none"
            raise UnknownJobTypeError(f"unknown job type {name!r}; this mode's custom jobs: {have}",
                                      param="job_type") from None
