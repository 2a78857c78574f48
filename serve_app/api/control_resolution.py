"""Resolution of a request's ControlNet units (`controls`) against the ControlNets under MODEL_ROOT and the
mode: each model found by name (an A1111 title's `[hash]` and a file suffix are dropped), made for the mode's
family (else a 422 naming both), its preprocessor one that is served (else a 422 listing them), its image
decoded within the mode's limits. The image is preprocessed by the replica (`control.control_image`), off
the router's event loop."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial

from PIL import Image

from serve_app.api.adapter_catalog import AdapterCatalog
from serve_app.api.flow_control_rules import check_flow_unit, check_flux_true_cfg, union_mode
from serve_app.api.schemas.controlnet import ControlUnit, IpAdapterUnit
from serve_app.config.modes_file import ModeConfig, ModeLimits
from serve_app.core.errors import RequestValidationError, UnknownAdapterError
from serve_app.core.strict_model import quote
from serve_app.model.control.preprocessors import PREPROCESSORS, preprocessor_name
from serve_app.model.families import Family
from serve_app.model.generation.job import ControlUse, IpAdapterUse
from serve_app.model.inspection.adapter_inspect import AdapterInfo, AdapterKind

# native unit field -> the A1111 ControlNet extension's (for errors of translated requests)
A1111_UNIT_FIELDS = {"model": "model", "image": "image", "weight": "weight", "start": "guidance_start",
                     "end": "guidance_end", "mode": "control_mode", "resize": "resize_mode",
                     "preprocessor": "module", "processor_res": "processor_res",
                     "control_type": "union_control_type"}
Decode = Callable[[str, str, ModeLimits], Image.Image]


def control_model_name(requested: str) -> str:
    """A unit's model as a name: `control_v11p_sd15_canny [d14c016b]` and `x.safetensors` / `x.pth` -> the stem."""
    name = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", requested.strip())
    for suffix in (".safetensors", ".pth", ".ckpt", ".bin"):
        name = name.removesuffix(suffix)
    return name


def resolve_controls(units: Sequence[ControlUnit], adapters: AdapterCatalog, mode: ModeConfig, family: Family,
                     decode: Decode, name: Callable[[str], str] = lambda f: f, *, job: str = "txt2img",
                     variant: str = "", full_res: bool = False, true_cfg_scale: float | None = None,
                     ) -> list[ControlUse]:
    """The ControlNet units of a `job` (txt2img, img2img, inpaint), checked (see the module docstring; SD3 / FLUX:
    `flow_control_rules`); `name` gives the client's own name of a native field (A1111's units are
    `alwayson_scripts.controlnet.args`)."""
    prefix = name("controls")
    if family is Family.FLUX and units:
        check_flux_true_cfg(true_cfg_scale, job, name("true_cfg_scale"))

    def where(i: int, part: str) -> str:
        return f"{prefix}[{i}].{part if prefix == 'controls' else A1111_UNIT_FIELDS.get(part, part)}"

    nets = {a.name: a for a in adapters.of_kind(AdapterKind.CONTROLNET)}
    used: list[ControlUse] = []
    for i, unit in enumerate(units):
        preprocessor = preprocessor_name(unit.preprocessor)
        if preprocessor is None:
            raise RequestValidationError(f"`{where(i, 'preprocessor')}` {quote(unit.preprocessor)} is not available; "
                                         f"served: {', '.join(PREPROCESSORS)}", param=where(i, "preprocessor"))
        net = nets.get(control_model_name(unit.model))
        if net is None:
            mine = sorted(n for n, a in nets.items() if a.family is family)
            raise UnknownAdapterError(f"ControlNet {quote(unit.model)} not found; ControlNets for {family.value}: "
                                      f"{', '.join(mine) or 'none'}", param=where(i, "model"))
        if net.family is not family:
            made_for = net.family.value if net.family else "another family"
            raise RequestValidationError(f"`{where(i, 'model')}`: ControlNet {quote(net.name)} is made for "
                                         f"{made_for}; mode {mode.name!r} is {family.value}", param=where(i, "model"))
        if family.flow:
            check_flow_unit(unit, net, len(units), family, job, variant, full_res, mode.name,
                            partial(where, i))
        image = decode(unit.image, where(i, "image"), mode.limits)
        used.append(ControlUse(
            name=net.name, path=net.path, file_bytes=net.file_bytes, parameters=net.parameters or 0, image=image,
            preprocessor=preprocessor, weight=unit.weight, start=unit.start, end=unit.end, mode=unit.mode,
            resize=unit.resize, processor_res=unit.processor_res, threshold_a=unit.threshold_a,
            threshold_b=unit.threshold_b, union_mode=union_mode(unit, net, preprocessor, partial(where, i))))
    return used


def split_ip_adapter_units(units: Sequence[ControlUnit], adapters: AdapterCatalog
                           ) -> tuple[list[ControlUnit], list[IpAdapterUnit]]:
    """ControlNet units whose model is an IP-Adapter (the A1111 extension runs IP-Adapters as its units) apart
    from the others."""
    ips = {a.name for a in adapters.of_kind(AdapterKind.IPADAPTER)}
    nets = {a.name for a in adapters.of_kind(AdapterKind.CONTROLNET)}
    moved = [u for u in units if control_model_name(u.model) in ips and control_model_name(u.model) not in nets]
    return ([u for u in units if u not in moved],
            [IpAdapterUnit(model=u.model, image=u.image, weight=min(u.weight, 2.0)) for u in moved])


def _encoder_for(ip: AdapterInfo, adapters: AdapterCatalog, field: str) -> AdapterInfo:
    """The image encoder under `clip_vision/` that gives what `ip` takes."""
    for enc in adapters.of_kind(AdapterKind.CLIP_VISION):
        if (ip.embed_dim is not None and enc.embed_dim == ip.embed_dim) or (
                ip.hidden_dim is not None and enc.hidden_dim == ip.hidden_dim):
            return enc
    needs = f"projection dim {ip.embed_dim}" if ip.embed_dim is not None else f"hidden size {ip.hidden_dim}"
    raise RequestValidationError(f"`{field}`: IP-Adapter {quote(ip.name)} needs an image encoder of {needs} under "
                                 "clip_vision/; none there fits", param=field)


def resolve_ip_adapters(units: Sequence[IpAdapterUnit], adapters: AdapterCatalog, mode: ModeConfig, family: Family,
                        decode: Decode, name: Callable[[str], str] = lambda f: f) -> list[IpAdapterUse]:
    """A request's IP-Adapters: each found by name, made for the mode's family, with its image encoder."""
    prefix = name("ip_adapters")
    found = {a.name: a for a in adapters.of_kind(AdapterKind.IPADAPTER)}
    used: list[IpAdapterUse] = []
    for i, unit in enumerate(units):
        field = f"{prefix}[{i}].model"
        ip = found.get(control_model_name(unit.model))
        if ip is None:
            mine = sorted(n for n, a in found.items() if a.family is family)
            raise UnknownAdapterError(f"IP-Adapter {quote(unit.model)} not found; IP-Adapters for {family.value}: "
                                      f"{', '.join(mine) or 'none'}", param=field)
        if ip.family is not family:
            made_for = ip.family.value if ip.family else "another family"
            raise RequestValidationError(f"`{field}`: IP-Adapter {quote(ip.name)} is made for {made_for}; mode "
                                         f"{mode.name!r} is {family.value}", param=field)
        encoder = _encoder_for(ip, adapters, field)
        used.append(IpAdapterUse(name=ip.name, path=ip.path, file_bytes=ip.file_bytes, parameters=ip.parameters or 0,
                                 encoder_path=encoder.path, encoder_parameters=encoder.parameters or 0,
                                 image=decode(unit.image, f"{prefix}[{i}].image", mode.limits), weight=unit.weight))
    return used
