"""Load a checkpoint (diffusers folder or single file) offline into the right diffusers pipelines.

Single files need the diffusers configs of their family. Dream Lab's demo files carry them in their
safetensors metadata; every other file uses the configs shipped in `serve_app/model/family_configs/<family>/`.
Nothing is ever downloaded (`local_files_only=True`).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from serve_app.errors import UnsupportedCheckpointError
from serve_app.model.checkpoint_inspect import CheckpointFormat, CheckpointInfo
from serve_app.model.families import Family
from serve_app.model.family_configs import config_dir
from serve_app.model.single_file_layout import METADATA_DIFFUSERS_CONFIG

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    img2img: Any
    txt2img: Any | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> Any:
        return self.txt2img if self.txt2img is not None else self.img2img


def _pipeline_classes(family: Family) -> tuple[type | None, type]:
    import diffusers as d

    if family is Family.SDXL_REFINER:
        return None, d.StableDiffusionXLImg2ImgPipeline
    if family is Family.SDXL:
        return d.StableDiffusionXLPipeline, d.StableDiffusionXLImg2ImgPipeline
    return d.StableDiffusionPipeline, d.StableDiffusionImg2ImgPipeline


def _config_dir(info: CheckpointInfo, family: Family) -> Path:
    embedded = info.metadata.get(METADATA_DIFFUSERS_CONFIG)
    if embedded is None:
        return Path(config_dir(family))
    from serve_app.model.single_file_writer import materialize_config_dir

    digest = hashlib.sha256(embedded.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"dreamlab-configs-{os.getuid()}" / digest
    if not (target / "model_index.json").is_file():
        materialize_config_dir(embedded, target)
    return target


def load_pipelines(info: CheckpointInfo, family: Family, dtype: torch.dtype, device: torch.device) -> LoadedPipelines:
    """Load `info`'s checkpoint as `family` onto `device` in `dtype`, offline."""
    if info.inpainting:
        raise UnsupportedCheckpointError(
            f"{info.path}: inpainting checkpoints (unet in_channels 9) are detected but not served yet",
            param="checkpoint")
    main_cls, img2img_cls = _pipeline_classes(family)
    load_cls = main_cls or img2img_cls
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if family in (Family.SD1, Family.SD2):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if info.format is CheckpointFormat.SINGLE_FILE:
        pipe = load_cls.from_single_file(info.path, config=str(_config_dir(info, family)), **kwargs)
    else:
        pipe = load_cls.from_pretrained(info.path, **kwargs)
    if device.type != "cpu":  # weights load on the CPU; .to() there is a no-op that only warns
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if main_cls is None:
        return LoadedPipelines(family=family, device=device, dtype=dtype, img2img=pipe)
    # from_pipe casts the shared modules to its own `dtype` (float32 when none is given): pass ours
    img2img = img2img_cls.from_pipe(pipe, dtype=dtype)
    img2img.set_progress_bar_config(disable=True)
    return LoadedPipelines(family=family, device=device, dtype=dtype, txt2img=pipe, img2img=img2img)


def free_device_memory(device: torch.device) -> None:
    """Collect garbage and hand cached CUDA blocks back to the driver."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
