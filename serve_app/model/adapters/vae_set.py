"""VAE overrides of one pipeline: each requested VAE file is built once (with the checkpoint VAE's own
config, so its scaling factor and upcasting rule stay the family's), kept for the next request (the
`MAX_HELD` most recently used), and swapped in for the requests that ask for it; every other request runs
with the checkpoint's own VAE. Files in diffusers' layout load as they are; the original LDM layout is
converted. A file that does not fit the checkpoint's VAE architecture fails that request only.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from serve_app.core.errors import AdapterFileError
from serve_app.model.generation.job import AdapterFile

logger = logging.getLogger(__name__)

MAX_HELD = 2


class VaeSet:
    def __init__(self) -> None:
        self.held: OrderedDict[AdapterFile, Any] = OrderedDict()  # least recent first
        self.own: Any = None  # the checkpoint's VAE while another is swapped in
        self.loads = 0

    @property
    def bytes(self) -> int:
        return sum(p.numel() * p.element_size() for vae in self.held.values() for p in vae.parameters())

    def apply(self, pipes: Any, vae: AdapterFile | None) -> None:
        """Make `pipes` (a `LoadedPipelines`) decode with `vae`, or with the checkpoint's own for None."""
        current = pipes.base.vae
        if self.own is None:
            self.own = current
        target = self.own if vae is None else self._get(vae, self.own)
        if target is not current:
            for pipe in pipes.all():
                pipe.vae = target

    def _get(self, vae: AdapterFile, own: Any) -> Any:
        if vae in self.held:
            self.held.move_to_end(vae)
            return self.held[vae]
        built = self._build(vae, own)
        self.held[vae] = built
        self.loads += 1
        while len(self.held) > MAX_HELD:
            old, _ = self.held.popitem(last=False)
            logger.info("VAE %s dropped (at most %d held)", old.name, MAX_HELD)
        logger.info("VAE %s loaded (%d bytes)", vae.name, vae.file_bytes)
        return built

    @staticmethod
    def _build(vae: AdapterFile, own: Any) -> Any:
        from diffusers import AutoencoderKL
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
        from safetensors.torch import load_file

        try:
            state = {k.removeprefix("first_stage_model.").removeprefix("vae."): t
                     for k, t in load_file(vae.path).items()}
            if any(k.startswith("encoder.down.") for k in state):
                state = convert_ldm_vae_checkpoint(state, dict(own.config))
            built = AutoencoderKL.from_config(own.config)
            built.load_state_dict(state, strict=True)
        except Exception as exc:
            raise AdapterFileError(f"VAE {vae.name!r} ({vae.path}) does not fit this checkpoint's VAE: "
                                   f"{type(exc).__name__}: {str(exc)[:200]}", param="vae") from exc
        return built.to(device=own.device, dtype=own.dtype).eval()

    def reset(self, pipes: Any) -> None:
        """Put the checkpoint's VAE back and drop the others (before the pipelines move or go)."""
        if pipes is not None and self.own is not None:
            self.apply(pipes, None)
        self.held.clear()
        self.own = None
