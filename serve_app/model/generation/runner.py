"""One mode's model: load, generate, offload, unload. The mode worker deployment is a thin wrapper around this.

Tiers: a loaded model is in `vram` (on its device); `offload` moves it to `ram` (host memory, pinned on
CUDA; on a CPU device the built pipeline is simply kept), from where `load` is a device copy instead of a
read from disk and a pipeline construction; `unload` drops it from either tier (`disk`).

Generation is serialised by a lock: one device runs one denoising loop at a time, and the per-request
scheduler and the request's adapters (LoRAs: `lora_set`, embeddings: `embedding_set`, a VAE: `vae_set`)
are applied under the same lock. What each job kind calls is built in `job_inputs`; `self_check` (its own
module) tells a request that failed from a pipeline that broke (the mode worker runs it after an unexpected
error); it and custom jobs run without LoRAs and with the checkpoint's own VAE.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from PIL import Image

from serve_app import __version__
from serve_app.core.errors import DreamLabError, GenerationCancelledError, ModelNotReadyError
from serve_app.model.adapters.control_set import ControlSet
from serve_app.model.adapters.embedding_set import EmbeddingSet
from serve_app.model.adapters.ipadapter_set import IpAdapterSet
from serve_app.model.adapters.lora_set import LoraSet
from serve_app.model.adapters.vae_set import VaeSet
from serve_app.model.components.component_files import ComponentPaths
from serve_app.model.components.mode_components import mode_components
from serve_app.model.control.control_image import prepare_control_image
from serve_app.model.control.control_pipelines import controlled_pipeline
from serve_app.model.families import Family
from serve_app.model.generation.hires_fix import second_pass, second_pass_steps
from serve_app.model.generation.infotext import generation_infotext, png_with_infotext
from serve_app.model.generation.inpainting import composite
from serve_app.model.generation.job import (
    LATENT_UPSCALERS,
    AdapterFile,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    GenerationTimings,
    LoraUse,
)
from serve_app.model.generation.job_inputs import job_inputs
from serve_app.model.generation.schedulers import make_scheduler
from serve_app.model.generation.self_check import self_check as run_self_check
from serve_app.model.generation.variation_noise import variation_start
from serve_app.model.inspection.checkpoint_inspect import CheckpointInfo, inspect_checkpoint
from serve_app.model.inspection.model_hashes import hash_in_background, short_hash
from serve_app.model.loading.mapped_weights import MappedComponent
from serve_app.model.loading.noise_schedule import mode_schedule_overrides
from serve_app.model.loading.pipeline_loader import (
    LoadedPipelines,
    free_device_memory,
    load_pipelines,
    pick_device,
    torch_dtype_for,
)
from serve_app.model.model_state import ModelState, Tier
from serve_app.model.prompts.encoding import encode_prompts
from serve_app.model.prompts.flow_prompts import flow_prompt_kwargs

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_CONTROL_CACHE_BYTES = 4 * 1024**3
ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
Loader = Callable[[CheckpointInfo, Family, torch.dtype, torch.device], LoadedPipelines]

class RunnerSettings(Protocol):
    """What the runner needs of a mode (a modes-file `ModeConfig` is one; the model layer does not import it)."""

    @property
    def name(self) -> str: ...
    @property
    def family(self) -> Family | None: ...
    @property
    def dtype(self) -> str: ...
    @property
    def prediction_type(self) -> str | None: ...
    @property
    def lora_cache_bytes(self) -> int: ...


def encode_image(image, fmt: str, infotext: str | None = None) -> bytes:
    """The image's bytes; a PNG carries `infotext` as its `parameters` chunk (A1111's)."""
    buf = io.BytesIO()
    if fmt == "png":
        if infotext is not None:
            return png_with_infotext(image, infotext)
        image.save(buf, format="PNG")
    else:
        image.save(buf, format=fmt.upper(), quality=90)
    return buf.getvalue()


class ModelRunner:
    """Owns one checkpoint's pipelines on one device."""

    def __init__(
        self,
        mode: RunnerSettings,
        checkpoint: Path,
        *,
        device: torch.device | None = None,
        loader: Loader = load_pipelines,
        components: ComponentPaths | None = None,
    ) -> None:
        self.mode = mode
        self.info, self.component_files = mode_components(inspect_checkpoint(checkpoint), components, mode.name,
                                                          mode.family)
        self.family = mode.family or self.info.family
        self.device = device or pick_device()
        self.dtype = torch_dtype_for(mode.dtype, self.device)
        self._loader = loader
        self._pipes: LoadedPipelines | None = None
        self._model_hash: Future[str | None] | None = None  # from the first load on
        self._scheduler_config: dict[str, Any] = {}
        self._schedulers: dict[str, Any] = {}  # name -> instance; reused (generation is serialised)
        self._lock = threading.RLock()
        self.loras = LoraSet(mode.lora_cache_bytes)
        self.embeddings = EmbeddingSet()
        self.vaes = VaeSet()
        control_bytes = getattr(mode, "control_cache_bytes", DEFAULT_CONTROL_CACHE_BYTES)
        self.controls = ControlSet(control_bytes, self.dtype, self.device)
        self.ips = IpAdapterSet(control_bytes, self.dtype, self.device)
        self.state = ModelState.COLD
        self.tier = Tier.DISK
        self.loaded_from: Tier | None = None  # where the last load came from
        self.last_error: str | None = None
        self.last_used = 0.0

    @property
    def loaded(self) -> bool:
        """On its device, ready to generate."""
        return self.tier is Tier.VRAM

    def load(self) -> bool:
        """Bring the pipelines onto the device: a copy from the RAM tier, else a load from disk; False (a
        no-op) when they are there. A checkpoint that cannot be read (gone, corrupt) leaves the model cold:
        the error names the file and the next request tries again."""
        with self._lock:
            if self.tier is Tier.VRAM:
                return False
            started = time.perf_counter()
            self.state = ModelState.LOADING
            if self.tier is Tier.RAM:
                return self._restore(started)
            try:
                self._pipes = self._loader(self.info, self.family, self.dtype, self.device)
            except (DreamLabError, torch.cuda.OutOfMemoryError) as exc:  # the file, or room: the pipeline is sound
                self._pipes, self.state, self.last_error = None, ModelState.COLD, str(exc)[:500]
                free_device_memory(self.device)
                raise
            except Exception as exc:
                self.state, self.last_error = ModelState.FAILED, str(exc)
                raise
            self.loaded_from = Tier.DISK
            self._model_hash = hash_in_background(self.info.path)  # A1111's, for infotexts and sd-models
            self._scheduler_config = dict(self._pipes.base.scheduler.config)
            self._schedulers = {}
            self._scheduler_config.update(mode_schedule_overrides(self.mode))
            self.tier = Tier.VRAM
            self.state = ModelState.READY
            self.last_used = time.time()
            logger.info("mode %s loaded (%s, %s on %s) in %.2fs", self.mode.name, self.family.value,
                        self.dtype, self.device, time.perf_counter() - started)
            return True

    def _restore(self, started: float) -> bool:
        assert self._pipes is not None
        if self.device.type != "cpu":
            try:
                self._pipes.move_to(self.device)
            except BaseException:  # half moved: drop it; the next load reads the checkpoint again
                self._pipes, self.tier, self.state = None, Tier.DISK, ModelState.COLD
                free_device_memory(self.device)
                raise
        self.tier = Tier.VRAM
        self.loaded_from = Tier.RAM
        self.state = ModelState.READY
        logger.info("mode %s restored from the RAM tier to %s in %.3fs", self.mode.name, self.device,
                    time.perf_counter() - started)
        return True

    def offload(self) -> bool:
        """Move the pipelines from the device to host memory (the RAM tier); False when not on the device."""
        with self._lock:
            if self.tier is not Tier.VRAM or self._pipes is None:
                return False
            self.vaes.reset(self._pipes)  # only the checkpoint's own modules move to the RAM tier
            self.controls.clear()
            self.ips.clear()
            if self.device.type != "cpu":
                self._pipes.move_to(torch.device("cpu"))
                free_device_memory(self.device)
            self.tier = Tier.RAM
            self.state = ModelState.OFFLOADED
            logger.info("mode %s offloaded to the RAM tier", self.mode.name)
            return True

    def unload(self) -> bool:
        """Drop the pipelines from either tier and free their memory; False when nothing was held."""
        with self._lock:
            if self._pipes is None:
                return False
            self.vaes.reset(self._pipes)
            self._pipes = None
            self.loras.clear()
            self.embeddings.clear()
            self.controls.clear()
            self.ips.clear()
            free_device_memory(self.device)
            self.tier = Tier.DISK
            self.state = ModelState.COLD
            logger.info("mode %s unloaded", self.mode.name)
            return True

    def parameter_bytes(self) -> int:
        """Bytes of every parameter and buffer of the held pipeline (its footprint without CUDA, and what it
        takes in the RAM tier)."""
        if self._pipes is None:
            return 0
        return sum(t.numel() * t.element_size() for module in self._pipes.modules()
                   for t in (*module.parameters(), *module.buffers()))

    def host_components(self) -> list[MappedComponent]:
        """The parts of the held pipeline whose host-memory weights are a mapped component file (one copy per
        node, however many modes use it): held in host memory in the RAM tier, or on a CPU device."""
        return [] if self._pipes is None else self._pipes.mapped_components()

    def own_host_bytes(self) -> int:
        """What the held pipeline takes in host memory beyond its mapped component files."""
        return max(0, self.parameter_bytes() - sum(c.host_bytes for c in self.host_components()))

    def adapter_bytes(self) -> int:
        """Bytes of the adapters held loaded (counted in the replica's footprint)."""
        return self.loras.bytes + self.embeddings.bytes + self.vaes.bytes + self.controls.bytes + self.ips.bytes

    def adapter_bytes_to_load(self, params: GenerationRequest) -> int:
        """Bytes the request's adapter files not held yet would add (reserved before they are loaded)."""
        embeddings = [e for e in params.embeddings if self.embeddings.loaded.get(e.name.lower()) != e]
        return (self.loras.missing_bytes(params.loras) + sum(e.file_bytes for e in embeddings)
                + (params.vae.file_bytes if params.vae is not None and params.vae not in self.vaes.held else 0)
                + self.controls.missing_bytes(params.controls) + self.ips.missing_bytes(params.ip_adapters))

    def adapter_loads(self) -> int:
        """Adapter files read from disk so far."""
        return self.loras.loads + self.embeddings.loads + self.vaes.loads + self.controls.loads + self.ips.loads

    def adapt(self, pipes: LoadedPipelines, loras: list[LoraUse], embeddings: list[AdapterFile],
              vae: AdapterFile | None) -> int:
        """Make `pipes` run with exactly these adapters (call under `exclusive`); how many files that read."""
        before = self.adapter_loads()
        self.loras.apply(pipes.base, loras)  # the modules are shared: both pipelines see them
        self.embeddings.apply(pipes.base, embeddings)
        self.vaes.apply(pipes, vae)
        return self.adapter_loads() - before

    def exclusive(self) -> AbstractContextManager[bool]:
        """Held while a generation, a custom job or the self-check runs: alone on the device, and no offload
        or unload takes the pipelines away meanwhile."""
        return self._lock

    def pipelines(self) -> LoadedPipelines:
        """The loaded pipelines, for custom jobs; raises when the mode is not on its device."""
        if self._pipes is None or not self.loaded:
            raise ModelNotReadyError(f"mode {self.mode.name!r} is not loaded (state {self.state.value})",
                                     param="mode")
        return self._pipes

    def run_exclusive(self, fn: Callable[[], T]) -> T:
        """Run `fn` (a custom job) the way a generation runs: alone on the pipeline, which no offload or unload
        can take away meanwhile; raises when the mode is not on its device."""
        with self._lock:
            self.adapt(self.pipelines(), [], [], None)  # the checkpoint's own weights, not the last request's
            result = fn()
            self.last_used = time.time()
            return result

    def scheduler(self, name: str) -> Any:
        """The named scheduler, configured for this checkpoint (call under `exclusive`: instances are reused)."""
        if name not in self._schedulers:  # building one costs 2-8 ms: build each once
            self._schedulers[name] = make_scheduler(name, self._scheduler_config, flow=self.family.flow)
        return self._schedulers[name]

    def self_check(self, request_id: str = "-") -> bool:
        """A minimal real generation; False when the pipeline is broken (see `self_check`)."""
        return run_self_check(self, request_id)

    def _prompt_kwargs(self, pipe: Any, params: GenerationRequest, images: int) -> dict[str, Any]:
        """The pipeline's prompt arguments: A1111-weighted CLIP embeddings (UNet families), plain text (SD3, FLUX:
        see `flow_prompts`)."""
        if self.family.flow:
            return flow_prompt_kwargs(pipe, self.family, params.prompt, params.negative_prompt, params.prompt_syntax,
                                      images, params.true_cfg_scale)
        return encode_prompts(pipe, self.family, self.embeddings.in_prompt(params.prompt, params.embeddings),
                              self.embeddings.in_prompt(params.negative_prompt, params.embeddings),
                              params.clip_skip, params.prompt_syntax, images=images).call_kwargs()

    def generate(self, params: GenerationRequest, progress: ProgressFn | None = None,
                 cancelled: CancelFn | None = None) -> GenerationResult:
        """Run one resolved request; same params and seeds give the same image bytes."""
        self.family.check_job(params.kind, self.mode.name)
        hires = params.hires
        control_images = [prepare_control_image(c.image, c.preprocessor, (params.width, params.height), c.resize,
                                                c.processor_res, c.threshold_a, c.threshold_b)
                          for c in params.controls]  # (outside the lock: the device waits for none of it)
        with self._lock:
            pipes = self.pipelines()
            built = job_inputs(pipes, params, self.mode.name)
            pipe, inputs = built.pipe, built.inputs
            adapter_loads = self.adapt(pipes, params.loras, params.embeddings, params.vae)
            control_call: dict[str, Any] = {}
            if params.controls:
                before = self.controls.loads
                models = self.controls.models(params.controls, cfg=params.guidance_scale > 1)
                adapter_loads += self.controls.loads - before
                pipe, control_call = controlled_pipeline(pipes, pipe, models, params, control_images, inputs)
            pipe.scheduler = self.scheduler(params.scheduler)
            n = len(params.seeds)

            done_before = [0]  # steps of the hires fix's first pass, once it is done
            hires_steps = second_pass_steps(hires) if hires else 0

            def on_step_end(p, step: int, timestep, kwargs: dict) -> dict:
                if progress is not None:
                    total = params.steps + hires_steps if hires_steps else int(getattr(p, "_num_timesteps", 0))
                    progress(done_before[0] + step + 1, total or params.steps)
                if cancelled is not None and cancelled():
                    p._interrupt = True
                return kwargs

            call: dict[str, Any] = dict(
                **self._prompt_kwargs(pipe, params, n),
                num_inference_steps=params.steps,
                guidance_scale=params.guidance_scale,
                generator=[torch.Generator("cpu").manual_seed(s) for s in params.seeds],
                callback_on_step_end=on_step_end,
            )
            if (latents := variation_start(pipe, params)) is not None:
                call["latents"] = latents
            if built.pipe is not pipes.inpaint:  # (the inpainting pipelines repeat one image and mask per prompt)
                inputs = {k: [v] * n if isinstance(v, Image.Image) else v for k, v in inputs.items()}
            call.update(inputs)
            call.update(control_call)
            if hires is not None:
                call["output_type"] = "latent" if hires.upscaler in LATENT_UPSCALERS else "pil"
            started = time.perf_counter()
            ip_loads = self.ips.loads
            try:
                if params.ip_adapters:  # (in the UNet for this generation only: `finally` takes them out)
                    call.update(self.ips.attach(pipe, params.ip_adapters))
                with torch.inference_mode():
                    images = pipe(**call).images
                    if hires is not None:
                        assert pipes.img2img is not None  # (`job_inputs` refused hires on an inpainting checkpoint)
                        done_before[0] = params.steps
                        pipes.img2img.scheduler = pipe.scheduler
                        images = second_pass(pipes.img2img, images, hires, call)
            except Exception:
                self._schedulers.pop(params.scheduler, None)  # its state may be half-stepped: the next one is fresh
                raise
            finally:
                if params.ip_adapters:
                    self.ips.detach(pipe)
            adapter_loads += self.ips.loads - ip_loads
            if built.overlay is not None:  # unmasked pixels come back exactly as sent
                images = [composite(img, *built.overlay) for img in images]
            inference_s = time.perf_counter() - started
            if cancelled is not None and cancelled():
                raise GenerationCancelledError("generation cancelled: the client went away")
            self.last_used = time.time()
        started = time.perf_counter()
        latents = images.float().cpu().numpy() if params.answers_latents else None  # (torch-free)
        hashed = self._model_hash
        model_hash = short_hash(hashed.result()) if hashed is not None and hashed.done() else None
        encoded = []
        if latents is None:
            for img, seed in zip(images, params.seeds):
                text = generation_infotext(params, seed, self.mode.name, model_hash, f"dreamlab {__version__}")
                encoded.append(GeneratedImage(encode_image(img, params.output_format, text), seed,
                                              params.output_format, text))
        return GenerationResult(
            images=encoded, width=params.output_size[0], height=params.output_size[1], steps=params.steps,
            scheduler=params.scheduler,
            timings=GenerationTimings(inference_s=round(inference_s, 4),
                                      encode_s=round(time.perf_counter() - started, 4), adapter_loads=adapter_loads),
            latents=latents, model_hash=model_hash,
        )
