"""The IP-Adapters and CLIP image encoders loaded on one replica, kept as a cache bounded in bytes (least recently
used out, a request's own kept), like the ControlNet cache: an IP-Adapter's tensors in the mode's dtype on its
device, an encoder as a transformers model there too; both count in the replica's footprint.

Applied per generation: diffusers' `load_ip_adapter` puts the request's IP-Adapters into the UNet (decoupled
cross-attention processors and the image projection) from the held tensors, the encoder and a matching
feature extractor are set on the pipeline, and `detach` takes it all out again after the generation, so a
request without IP-Adapters runs the checkpoint's own attention. The runner calls both under its generation
lock.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from serve_app.core.errors import AdapterFileError, RequestValidationError
from serve_app.model.control.ipadapter_inspect import encoder_config, read_encoder_header
from serve_app.model.generation.job import IpAdapterUse

logger = logging.getLogger(__name__)


def _load_encoder(path: Path, dtype: torch.dtype, device: torch.device) -> Any:
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    weights, tensors, _ = read_encoder_header(path)
    if path.is_dir():
        config = CLIPVisionConfig(**json.loads((path / "config.json").read_text()))
    else:
        config = CLIPVisionConfig(**encoder_config(tensors))
    model: Any = CLIPVisionModelWithProjection(config)
    state = {k.removeprefix("model."): v for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [k for k in missing if "position_ids" not in k] or unexpected:
        raise ValueError(f"weights do not fit a CLIP vision model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class IpAdapterSet:
    def __init__(self, max_bytes: int, dtype: torch.dtype, device: torch.device) -> None:
        self.max_bytes = max_bytes
        self.dtype, self.device = dtype, device
        self.width = torch.empty((), dtype=dtype).element_size()
        self.loaded: OrderedDict[str, tuple[int, Any]] = OrderedDict()  # key -> (bytes, tensors or encoder)
        self.loads = 0

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.loaded.values())

    @staticmethod
    def _keys(ip: IpAdapterUse) -> tuple[str, str]:
        return ip.file_key, f"encoder={ip.encoder_path}"

    def missing_bytes(self, ips: list[IpAdapterUse]) -> int:
        sizes: dict[str, int] = {}
        for ip in ips:
            adapter, encoder = self._keys(ip)
            sizes[adapter], sizes[encoder] = ip.parameters * self.width, ip.encoder_parameters * self.width
        return sum(size for key, size in sizes.items() if key not in self.loaded)

    def _get(self, key: str, size: int, keep: set[str], load: Any, name: str) -> Any:
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return self.loaded[key][1]
        for old in [k for k in self.loaded if k not in keep]:
            if self.bytes + size <= self.max_bytes:
                break
            self.loaded.pop(old)
        try:
            value = load()
        except Exception as exc:  # a file that cannot be loaded fails this request, not the replica
            raise AdapterFileError(f"{name} cannot be loaded: {type(exc).__name__}: {str(exc)[:200]}",
                                   param="ip_adapters") from exc
        self.loaded[key] = (size, value)
        self.loads += 1
        logger.info("%s loaded (%d bytes; %d held)", name, size, self.bytes)
        return value

    def attach(self, pipe: Any, ips: list[IpAdapterUse]) -> dict[str, Any]:
        """Put `ips` into `pipe` (see the module docstring); the call arguments they add."""
        from safetensors import safe_open
        from transformers import CLIPImageProcessor

        if len({ip.encoder_path for ip in ips}) > 1:
            raise RequestValidationError("`ip_adapters` use different image encoders; one request takes "
                                         "IP-Adapters of one encoder", param="ip_adapters")
        keep = {k for ip in ips for k in self._keys(ip)}

        def tensors(ip: IpAdapterUse) -> dict[str, dict[str, torch.Tensor]]:
            out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
            with safe_open(ip.path, framework="pt", device="cpu") as f:
                for key in f.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                    part, _, rest = key.partition(".")
                    if part in out:
                        out[part][rest] = f.get_tensor(key).to(device=self.device, dtype=self.dtype)
            return out

        states = [self._get(ip.file_key, ip.parameters * self.width, keep, lambda ip=ip: tensors(ip),
                            f"IP-Adapter {ip.name!r}") for ip in ips]
        encoder = self._get(f"encoder={ips[0].encoder_path}", ips[0].encoder_parameters * self.width, keep,
                            lambda: _load_encoder(Path(ips[0].encoder_path), self.dtype, self.device),
                            f"image encoder {Path(ips[0].encoder_path).name!r}")
        size = encoder.config.image_size
        pipe._dreamlab_feature_extractor = pipe.feature_extractor
        pipe.register_modules(image_encoder=encoder,
                              feature_extractor=CLIPImageProcessor(size=size, crop_size=size))
        pipe.load_ip_adapter(states, subfolder=[""] * len(ips), weight_name=["-"] * len(ips),
                             image_encoder_folder=None, low_cpu_mem_usage=False)
        pipe.set_ip_adapter_scale([ip.weight for ip in ips])
        return {"ip_adapter_image": [ip.image for ip in ips]}

    def detach(self, pipe: Any) -> None:
        """Take the IP-Adapters out of `pipe` again (the checkpoint's own attention, no image encoder)."""
        pipe.unload_ip_adapter()
        pipe.register_modules(image_encoder=None, feature_extractor=getattr(pipe, "_dreamlab_feature_extractor", None))

    def clear(self) -> None:
        self.loaded.clear()
