"""The progress-stream bridge through a mode worker, without Ray or Serve: one event per step from the
generation thread, then the result; a consumer that goes away stops the generation at its next step and the
replica is free again. Fakes: `worker_fakes`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from deployments.protocol import ProgressEvent
from serve_app.core.errors import GenerationCancelledError
from serve_app.model.generation.job import GenerationRequest, GenerationResult, GenerationTimings
from tests.unit.worker_fakes import FakeRunner, make_registry, make_request, make_worker, run, runner_of, started

STEPS = 50


class Stepping:
    """A generation of STEPS steps that reports each and stops when told (as `ModelRunner.generate` does)."""

    def __init__(self) -> None:
        self.steps_run = 0
        self.stopped = threading.Event()

    def install(self, runner: FakeRunner) -> None:
        runner.generate = self.generate  # type: ignore[method-assign]

    def generate(self, request: GenerationRequest, progress: Callable[[int, int], None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> GenerationResult:
        for step in range(1, STEPS + 1):
            if cancelled is not None and cancelled():
                self.stopped.set()
                raise GenerationCancelledError("generation cancelled: the client went away")
            time.sleep(0.01)
            self.steps_run = step
            if progress is not None:
                progress(step, STEPS)
        return GenerationResult(images=[], width=request.width, height=request.height, steps=STEPS,
                                scheduler=request.scheduler, timings=GenerationTimings(inference_s=0.001))


def test_a_stream_yields_every_step_then_the_result(demo_models_dir: Path) -> None:
    stepping = Stepping()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, make_registry(), configure=stepping.install)
        async with started(worker):
            events = [event async for event in worker.generate_stream(make_request("streamed"))]
            steps = [e.step for e in events if isinstance(e, ProgressEvent)]
            assert steps == list(range(1, STEPS + 1)) and isinstance(events[-1], GenerationResult)
            assert all(e.total == STEPS for e in events[:-1]) and worker.inflight == 0

    run(scenario())


def test_a_consumer_that_goes_away_stops_the_generation(demo_models_dir: Path) -> None:
    stepping = Stepping()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, make_registry(), configure=stepping.install)
        async with started(worker):
            stream = worker.generate_stream(make_request("abandoned"))
            first = await anext(stream)
            assert isinstance(first, ProgressEvent) and first.step == 1
            await stream.aclose()  # the client disconnected
            # closing waited for the generation thread: it stopped early, and the replica is free
            assert stepping.stopped.is_set() and stepping.steps_run < STEPS and worker.inflight == 0
            assert (await worker.generate(make_request("next"))).steps == STEPS
            assert runner_of(worker).loaded

    run(scenario())
