"""Load a checkpoint (diffusers folder or single file) offline into the right diffusers pipelines.

Single files need the diffusers configs of their family. Dream Lab's demo files carry them in their
safetensors metadata; every other file uses the configs shipped in `serve_app/model/loading/family_configs/<family>/`.
Converting a single file's key layout costs more than reading it, so the conversion is done once and kept
as a diffusers folder in the conversion cache (`converted_cache`); later loads read that folder.
Nothing is ever downloaded (`local_files_only=True`).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from serve_app.core.errors import CheckpointNotFoundError, UnsupportedCheckpointError
from serve_app.model.families import FLUX_FILL_PIPELINE, PIPELINE_CLASS_NAMES, SERVED_FAMILIES, Family
from serve_app.model.inspection.checkpoint_inspect import CheckpointFormat, CheckpointInfo
from serve_app.model.inspection.safetensors_header import read_safetensors_header
from serve_app.model.inspection.single_file_layout import METADATA_DIFFUSERS_CONFIG
from serve_app.model.loading.converted_cache import CacheKey, ConvertedCache, resolve_cache_dir
from serve_app.model.loading.family_configs import config_dir
from serve_app.model.loading.mapped_folder import build_mapped_parts, share_by_content
from serve_app.model.loading.mapped_weights import MappedComponent, MappedPart, restore_mapping
from serve_app.model.loading.noise_schedule import apply_noise_schedule, noise_schedule_overrides

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_STORED_FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
# fp8 values widen exactly into fp16, bf16 and fp32 (fewer mantissa bits, an exponent range inside theirs)
_FP8_DTYPES = {"F8_E4M3", "F8_E5M2"}


def pick_device() -> torch.device:
    """CUDA (the replica's first visible GPU) when present, else the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def torch_dtype_for(name: str, device: torch.device) -> torch.dtype:
    """`auto` is fp16 on CUDA and fp32 on the CPU (fp16 matmuls are slow or missing there)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _TORCH_DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _TORCH_DTYPES.items()}[dtype]


@dataclass
class LoadedPipelines:
    """The pipelines of one loaded checkpoint; img2img shares every module with txt2img."""

    family: Family
    device: torch.device
    dtype: torch.dtype
    img2img: Any | None
    txt2img: Any | None = None
    inpaint: Any | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    mapped: list[MappedPart] = field(default_factory=list)  # parts whose host weights are a file's mapping

    @property
    def base(self) -> Any:
        return next(p for p in (self.txt2img, self.img2img, self.inpaint) if p is not None)

    @property
    def inpainting_only(self) -> bool:
        """An inpainting checkpoint (UNet in_channels 9): every job runs on the inpainting pipeline."""
        return self.txt2img is None and self.img2img is None

    def all(self) -> list[Any]:
        return [p for p in (self.txt2img, self.img2img, self.inpaint) if p is not None]

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in self.base.components.values() if isinstance(m, torch.nn.Module)]

    def mapped_components(self) -> list[MappedComponent]:
        """The parts whose host-memory weights are a mapped file, shared with every process mapping it."""
        return [part.component for part in self.mapped]

    def move_to(self, device: torch.device) -> None:
        """Move every module (shared by both pipelines) to `device`; to the CPU from CUDA, into pinned memory,
        so the copy back is a fast DMA, except the weights of mapped parts: they point back at their file's
        mapping (no copy; the page cache holds one copy for every replica of the node)."""
        to_host = device.type == "cpu"
        mapped = {id(part.module): part for part in self.mapped}
        for module in self.modules():
            part = mapped.get(id(module))
            if to_host and part is not None:
                restore_mapping(part)
            module.to(device)
            if to_host and torch.cuda.is_available():
                kept = {id(p) for p, _ in part.tensors} if part is not None else set()
                for tensor in (*module.parameters(), *module.buffers()):
                    if id(tensor) not in kept:
                        tensor.data = tensor.data.pin_memory()
        self.device = device


def _pipeline_classes(family: Family) -> tuple[Any, Any, Any]:
    """(txt2img, img2img, inpaint) pipeline classes of `family` (see `PIPELINE_CLASS_NAMES`); the inpaint one
    takes ordinary and inpainting (9-channel) UNets alike."""
    import diffusers as d

    txt2img, img2img, inpaint = PIPELINE_CLASS_NAMES[family]
    return (getattr(d, txt2img) if txt2img else None), getattr(d, img2img), getattr(d, inpaint)


def _config_dir(info: CheckpointInfo, family: Family) -> Path:
    embedded = info.metadata.get(METADATA_DIFFUSERS_CONFIG)
    if embedded is None:
        return Path(config_dir(family))
    from serve_app.model.loading.single_file_writer import embedded_config_dir

    return embedded_config_dir(embedded)


def _conversion_dtype(path: Path) -> torch.dtype | None:
    """The dtype a cache entry is written in: the file's own, so a load from the entry at any dtype equals a
    load from the file (fp32 for a file mixing fp16/bf16/fp32: widening is exact; fp8 weights are kept as fp16,
    or as the file's other float dtype, which hold every fp8 value exactly). None: not cached (fp64)."""
    tensors, _ = read_safetensors_header(path)
    floats = {t.dtype for t in tensors.values() if t.dtype.startswith(("F", "BF"))}
    has_fp8 = bool(floats & _FP8_DTYPES)
    floats -= _FP8_DTYPES
    if floats - _STORED_FLOAT_DTYPES.keys():
        return None
    if not floats:
        return torch.float16 if has_fp8 else None
    return _STORED_FLOAT_DTYPES[floats.pop()] if len(floats) == 1 else torch.float32


def _load_folder(load_cls: Any, folder: Path, family: Family, kwargs: dict[str, Any], mapped: list[MappedPart],
                 label: str, cache_root: Path | None, shared: dict[str, Path] | None = None) -> Any:
    """A diffusers folder whose UNet, VAE and text encoders are built on mapped weights (`mapped_folder`)."""
    parts: list[MappedPart] = []
    modules = build_mapped_parts(folder, family, kwargs["dtype"], parts, label, cache_root, shared)
    pipe = load_cls.from_pretrained(str(folder), **kwargs, **modules)
    mapped.extend(parts)  # (only once the load succeeded: a failed one falls back to another load)
    return pipe


def _load_single_file(load_cls: Any, info: CheckpointInfo, family: Family, kwargs: dict[str, Any],
                      cache_dir: str | Path | None, mapped: list[MappedPart]) -> Any:
    """From the conversion cache when it holds this file's conversion, else converted (and cached) now."""
    path = Path(info.path)
    config = _config_dir(info, family)

    def convert(**more: Any) -> Any:
        return load_cls.from_single_file(str(path), config=str(config), **{**kwargs, **more})

    root = resolve_cache_dir(path, cache_dir)
    if root is None:
        return convert()
    cache = ConvertedCache(root)
    key = CacheKey.for_checkpoint(path, family.value, config)

    entry = cache.lookup(key)
    if entry is not None:
        pipe = _load_entry(load_cls, cache, entry, info, family, kwargs, mapped)
        if pipe is not None:
            logger.info("%s: loaded from the conversion cache %s", path, entry)
            return pipe
    conversion_dtype = _conversion_dtype(path)
    if conversion_dtype is None:
        logger.info("%s: its stored dtypes (fp64) are not cached; it is converted on every load", path)
        return convert()

    def convert_into(folder: Path) -> None:
        convert(dtype=conversion_dtype).save_pretrained(folder, safe_serialization=True)

    started = time.perf_counter()
    entry = cache.write(key, convert_into)
    gc.collect()  # the converted pipeline is garbage now; free it before loading the entry
    if entry is not None:
        logger.info("%s: converted once into the conversion cache %s in %.2fs", path, entry,
                    time.perf_counter() - started)
        pipe = _load_entry(load_cls, cache, entry, info, family, kwargs, mapped)
        if pipe is not None:
            return pipe
    return convert()


def _load_entry(load_cls: Any, cache: ConvertedCache, entry: Path, info: CheckpointInfo, family: Family,
                kwargs: dict[str, Any], mapped: list[MappedPart]) -> Any | None:
    """Load a cache entry, its parts shared with other entries of the same content and mapped; one that does
    not load is discarded (None), never trusted."""
    try:
        shared = share_by_content(entry, cache.root)
        return _load_folder(load_cls, entry, family, kwargs, mapped, info.path, cache.root, shared)
    except (MemoryError, torch.cuda.OutOfMemoryError):  # no room is not a broken entry: keep it
        raise
    except Exception as exc:  # any failure of a derived copy: rebuild it from the checkpoint
        cache.discard(entry, f"it does not load ({type(exc).__name__}: {exc})")
        return None


def _quiet_loading() -> None:
    """No per-component progress bars in a replica's log on every load: the load is logged once, with its time."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_pipelines(info: CheckpointInfo, family: Family, dtype: torch.dtype, device: torch.device, *,
                   cache_dir: str | Path | None = None) -> LoadedPipelines:
    """Load `info`'s checkpoint as `family` onto `device` in `dtype`, offline.

    A single file goes through the conversion cache in `cache_dir` (default `$DREAMLAB_CACHE_DIR`, else
    `.dreamlab-cache` next to the file; `off` disables it): see `converted_cache`.
    """
    _quiet_loading()
    if not Path(info.path).exists():  # deleted since it was inspected: name the file, not a library's error
        raise CheckpointNotFoundError(f"{info.path}: checkpoint path does not exist", param="checkpoint")
    if info.serving_refusal is not None or family not in SERVED_FAMILIES:
        raise UnsupportedCheckpointError(
            f"{info.path}: {info.serving_refusal or f'family {family.value} is not served yet'}", param="checkpoint")
    main_cls, img2img_cls, inpaint_cls = _pipeline_classes(family)
    load_cls = main_cls or img2img_cls
    if info.inpainting:
        if info.format is CheckpointFormat.SINGLE_FILE and not family.flow:
            raise UnsupportedCheckpointError(
                f"{info.path}: inpainting single files (unet in_channels 9) are not served yet; save it as a "
                "diffusers folder (diffusers' from_single_file + save_pretrained)", param="checkpoint")
        if family is Family.FLUX:  # FLUX.1 Fill: its own pipeline, which inpaints only
            import diffusers

            inpaint_cls = getattr(diffusers, FLUX_FILL_PIPELINE)
        main_cls, img2img_cls, load_cls = None, None, inpaint_cls
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if family in (Family.SD1, Family.SD2):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    mapped: list[MappedPart] = []
    if family.flow:
        from serve_app.model.loading.flow_loader import load_flow_pipeline

        pipe = load_flow_pipeline(load_cls, info, family, dtype, mapped)
    elif info.format is CheckpointFormat.SINGLE_FILE:
        pipe = _load_single_file(load_cls, info, family, kwargs, cache_dir, mapped)
    else:
        pipe = _load_folder(load_cls, Path(info.path), family, kwargs, mapped, info.path,
                            resolve_cache_dir(Path(info.path), cache_dir))
    if device.type != "cpu":  # weights load on the CPU; .to() there is a no-op that only warns
        pipe = pipe.to(device)
    if not family.flow:  # (flow matching has no prediction type nor betas to rescale)
        apply_noise_schedule(pipe, noise_schedule_overrides(info.prediction_type, info.zero_terminal_snr))
    if info.inpainting:
        pipe.set_progress_bar_config(disable=True)
        return LoadedPipelines(family=family, device=device, dtype=dtype, img2img=None, inpaint=pipe, mapped=mapped)

    def derived(cls: Any) -> Any:  # shares every module; from_pipe casts them to its `dtype` (fp32 if none)
        derived_pipe = pipe if isinstance(pipe, cls) else cls.from_pipe(pipe, dtype=dtype)
        derived_pipe.set_progress_bar_config(disable=True)
        return derived_pipe

    return LoadedPipelines(family=family, device=device, dtype=dtype, txt2img=derived(main_cls) if main_cls else None,
                           img2img=derived(img2img_cls), inpaint=derived(inpaint_cls), mapped=mapped)


def free_device_memory(device: torch.device) -> None:
    """Collect garbage and hand cached CUDA blocks back to the driver."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
