"""The ControlNets loaded on one replica, kept as a cache bounded in bytes (least recently used out), like the
LoRA cache (`lora_set`): a request's units are loaded once, in the mode's dtype on its device, and their bytes
count in the replica's footprint (the worker reserves what a request's not-yet-loaded ones add before they
load: `missing_bytes`).

Loading, offline: a diffusers folder with `from_pretrained`; a single file's tensors (diffusers keys, or the
original ldm keys converted by diffusers' own `convert_controlnet_checkpoint`) into a model built from its
config (the file's `dreamlab.controlnet_config` metadata, else the family's, `control_configs`; a FLUX / SD3
ControlNet's read from its tensors, `flow_control_inspect`), as diffusers' class of its family.

Each loaded UNet ControlNet carries a forward hook that applies its unit's control mode (see `apply_mode`); the runner
calls this under its generation lock, so one request's modes never mix with another's.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from serve_app.core.errors import AdapterFileError
from serve_app.model.control.control_configs import CONTROLNET_CONFIGS
from serve_app.model.control.control_inspect import (
    METADATA_CONTROLNET_CONFIG,
    controlnet_fields,
    controlnet_layout,
    read_controlnet_header,
)
from serve_app.model.control.flow_control_inspect import flow_controlnet_config
from serve_app.model.families import Family
from serve_app.model.generation.job import ControlMode, ControlUse
from serve_app.model.inspection.model_hashes import hash_in_background

logger = logging.getLogger(__name__)

SOFT_INJECTION = 0.825  # A1111's per-block decay when the prompt (or the ControlNet) "is more important"


def soft_weights(count: int) -> list[float]:
    """A1111's soft injection: the deepest residual full strength, each shallower one 0.825 times the next."""
    return [SOFT_INJECTION ** (count - 1 - i) for i in range(count)]


def apply_mode(mode: ControlMode, cfg: bool, down: list[torch.Tensor], mid: torch.Tensor,
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A unit's residuals under its control mode (A1111's `control_mode`):
    balanced as they are; prompt ("My prompt is more important") softly weighted by depth; control
    ("ControlNet is more important") softly weighted and applied to the conditional half of a CFG batch only,
    so classifier-free guidance pushes towards the control (diffusers' `guess_mode` does the same)."""
    if mode == "balanced":
        return down, mid
    weights = soft_weights(len(down) + 1)
    out = [r * w for r, w in zip([*down, mid], weights)]
    if mode == "control" and cfg:
        for r in out:
            r[: r.shape[0] // 2] = 0  # diffusers orders a CFG batch [unconditional, conditional]
    return out[:-1], out[-1]


def _mode_hook(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
    """Applies the control mode of the unit this call is for: a module used by several units of one request is
    called once per unit per step, in the units' order, so its modes are taken in turn."""
    modes: list[ControlMode] = getattr(module, "_dreamlab_modes", ["balanced"])
    calls: int = getattr(module, "_dreamlab_calls", 0)
    module._dreamlab_calls = calls + 1  # type: ignore[assignment]
    mode = modes[calls % len(modes)]
    if mode == "balanced":
        return output
    down, mid = apply_mode(mode, getattr(module, "_dreamlab_cfg", False), list(output[0]), output[1])
    return (down, mid) if isinstance(output, tuple) else type(output)(down, mid)


_MODEL_CLASSES = {Family.FLUX: "FluxControlNetModel", Family.SD3: "SD3ControlNetModel"}  # else ControlNetModel


def load_controlnet(control: ControlUse, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The ControlNet of `control` on `device` in `dtype` (see the module docstring); offline."""
    import diffusers
    from safetensors.torch import load_file

    path = Path(control.path)
    weights, tensors, metadata = read_controlnet_header(path)
    family = controlnet_fields(path, tensors, metadata)["family"]
    cls = getattr(diffusers, _MODEL_CLASSES.get(family, "ControlNetModel"))
    if path.is_dir():
        variant = "fp16" if weights.name.endswith(".fp16.safetensors") else None
        model = cls.from_pretrained(str(path), variant=variant, local_files_only=True)
    else:
        if METADATA_CONTROLNET_CONFIG in metadata:
            config = json.loads(metadata[METADATA_CONTROLNET_CONFIG])
        elif family.flow:
            config = flow_controlnet_config(family, tensors)
        else:
            config = dict(CONTROLNET_CONFIGS[family])
        state = load_file(str(path))
        if controlnet_layout(list(tensors)) == "original":
            from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

            state = convert_controlnet_checkpoint(state, config)
        model = cls.from_config(config)
        model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class ControlSet:
    def __init__(self, max_bytes: int, dtype: torch.dtype, device: torch.device) -> None:
        self.max_bytes = max_bytes
        self.dtype, self.device = dtype, device
        self.loaded: OrderedDict[str, tuple[ControlUse, torch.nn.Module]] = OrderedDict()  # least recent first
        self.loads = 0

    def _size(self, control: ControlUse) -> int:
        return control.parameters * torch.empty((), dtype=self.dtype).element_size()

    @property
    def bytes(self) -> int:
        return sum(self._size(c) for c, _ in self.loaded.values())

    def missing_bytes(self, controls: list[ControlUse]) -> int:
        """Bytes the request's ControlNets that are not loaded yet will take."""
        missing = {c.file_key: c for c in controls if c.file_key not in self.loaded}
        return sum(self._size(c) for c in missing.values())

    def models(self, controls: list[ControlUse], cfg: bool) -> list[torch.nn.Module]:
        """The loaded model of each unit (loading what is missing), each set to its unit's control mode."""
        keep = {c.file_key for c in controls}
        models = [self._ensure(control, keep) for control in controls]
        for model in models:
            model._dreamlab_modes = [c.mode for c, m in zip(controls, models) if m is model]  # type: ignore[assignment]
            model._dreamlab_calls = 0  # type: ignore[assignment]
            model._dreamlab_cfg = cfg  # type: ignore[assignment]
        return models

    def _ensure(self, control: ControlUse, keep: set[str]) -> torch.nn.Module:
        key = control.file_key
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return self.loaded[key][1]
        self._trim(keep, incoming=self._size(control))
        try:
            model = load_controlnet(control, self.dtype, self.device)
        except AdapterFileError:
            raise
        except Exception as exc:  # a file diffusers cannot load fails this request, not the replica
            raise AdapterFileError(f"ControlNet {control.name!r} cannot be loaded: {type(exc).__name__}: "
                                   f"{str(exc)[:200]}", param="controls") from exc
        if type(model).__name__ not in _MODEL_CLASSES.values():  # (transformer ControlNets: balanced only)
            model.register_forward_hook(_mode_hook, with_kwargs=True)
        hash_in_background(control.path)  # A1111's `name [hash]` titles (`/controlnet/model_list`, infotexts)
        self.loaded[key] = (control, model)
        self.loads += 1
        logger.info("ControlNet %s loaded (%d bytes; %d held)", control.name, self._size(control), self.bytes)
        return model

    def _trim(self, keep: set[str], incoming: int = 0) -> None:
        for old in [k for k in self.loaded if k not in keep]:
            if self.bytes + incoming <= self.max_bytes:
                return
            control, _ = self.loaded.pop(old)
            logger.info("ControlNet %s unloaded (cache over %d bytes)", control.name, self.max_bytes)

    def clear(self) -> None:
        """Drop every loaded ControlNet (the pipeline left the device, or is gone)."""
        self.loaded.clear()
