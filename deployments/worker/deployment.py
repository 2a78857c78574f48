"""What Serve runs for a mode: a `ModeWorker` that starts in its (async) constructor, stops in `__del__`
after Serve drained it, tells Serve's routing which adapter sets it holds and Serve's autoscaler the mode's
backlog in the routers (`record_autoscaling_stats`, read by `backlog_policy.BacklogPolicy`).

Placement is checked again here, where the options a Serve config overrode are known: a replica that sees a
GPU but was placed with no `num_gpus` on a cluster with GPUs refuses to start, naming its mode.

Affinity uses Serve's own model multiplexing: the router sends a request with adapters under its set's id
(`GenerationRequest.adapter_set_id`, as `multiplexed_model_id`), and each replica advertises the ids of the
sets it ran last (`adapter_sets_per_replica` of them) through a `serve.multiplexed` function, so Serve
prefers a replica that already holds the request's LoRAs and VAE; any replica loads them on demand.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from ray import serve

from deployments.protocol import GenerationRequest, GenerationResult, ProgressEvent
from deployments.worker.backlog_policy import BACKLOG_METRIC
from deployments.worker.mode_worker import ModeWorker
from serve_app.core.errors import ConfigError


def check_placement(mode: str, sees_cuda: bool, gpu_fraction: float | None, cluster_gpus: float) -> None:
    """A replica that sees CUDA but holds no GPU in Ray's accounting would use `cuda:0` unbooked."""
    if sees_cuda and cluster_gpus > 0 and not gpu_fraction:
        raise ConfigError(f"mode {mode!r} was placed with no num_gpus on a cluster with {cluster_gpus:g} GPUs yet "
                          "sees a GPU: give it ray_actor_options.num_gpus (a Serve config's `deployments:` entry "
                          "replaces the whole ray_actor_options of the modes file)",
                          param="ray_actor_options.num_gpus")


class ModeWorkerDeployment(ModeWorker):
    async def __init__(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]  # Serve awaits it
        super().__init__(*args, **kwargs)
        import ray

        check_placement(self.mode.name, self.probe.cuda, self.probe.gpu_fraction(),
                        float(ray.cluster_resources().get("GPU", 0.0)))

        async def held_adapter_set(set_id: str) -> str:  # the adapters themselves load in the generation
            return set_id

        # an instance attribute: the bound comes from the mode's config, and Serve finds it on the instance
        self.held_adapter_set = serve.multiplexed(
            max_num_models_per_replica=self.mode.adapter_sets_per_replica)(held_adapter_set)
        await self.start()

    async def _advertise(self, request: GenerationRequest) -> None:
        set_id = request.adapter_set_id()
        if set_id:
            await self.held_adapter_set(set_id)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        await self._advertise(request)
        return await super().generate(request)

    async def generate_stream(self, request: GenerationRequest,
                              ) -> AsyncGenerator[ProgressEvent | GenerationResult, None]:
        await self._advertise(request)
        async with aclosing(super().generate_stream(request)) as events:  # closed with this generator
            async for event in events:
                yield event

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics: the requests of this mode waiting in the routers."""
        return {BACKLOG_METRIC: float(self.residency.backlog)}

    async def __del__(self) -> None:
        await self.stop()
