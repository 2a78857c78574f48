"""The LoRAs loaded into one pipeline, kept as a cache: each is loaded once (diffusers' `load_lora_weights`),
combined per request with that request's weights (`set_adapters`), turned off for a request without LoRAs
(`disable_lora`), and the least recently used are deleted when their bytes pass the budget.

The runner calls it under its generation lock, so one request's set never mixes with another's.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any

from serve_app.core.errors import AdapterFileError
from serve_app.model.generation.job import LoraUse

logger = logging.getLogger(__name__)


def adapter_name(lora: LoraUse) -> str:
    """A PEFT adapter name for this file version (names must be identifiers; a changed file is a new name)."""
    return "lora_" + hashlib.sha1(f"{lora.path}:{lora.file_bytes}".encode()).hexdigest()[:16]


class LoraSet:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.loaded: OrderedDict[str, LoraUse] = OrderedDict()  # adapter name -> file; least recent first
        self.loads = 0  # loads from disk, for benchmarks and tests

    @property
    def bytes(self) -> int:
        return sum(lora.file_bytes for lora in self.loaded.values())

    def missing_bytes(self, loras: list[LoraUse]) -> int:
        """Bytes of `loras` that are not loaded yet."""
        return sum(lora.file_bytes for lora in loras if adapter_name(lora) not in self.loaded)

    def apply(self, pipe: Any, loras: list[LoraUse]) -> None:
        """Make `pipe` run with exactly `loras` at their weights (none: every loaded LoRA off)."""
        if not loras:
            if self.loaded:
                pipe.disable_lora()
            return
        names = [adapter_name(lora) for lora in loras]
        for lora, name in zip(loras, names):
            self._ensure(pipe, lora, name, keep=set(names))
        self._trim(pipe, keep=set(names))
        pipe.enable_lora()
        pipe.set_adapters(names, [lora.weight for lora in loras])

    def _trim(self, pipe: Any, keep: set[str], incoming: int = 0) -> None:
        """Delete the least recently used LoRAs outside `keep` until `incoming` more bytes fit the budget."""
        for old in [n for n in self.loaded if n not in keep]:
            if self.bytes + incoming <= self.max_bytes:
                return
            pipe.delete_adapters(old)
            logger.info("LoRA %s unloaded (cache over %d bytes)", self.loaded.pop(old).name, self.max_bytes)

    def _ensure(self, pipe: Any, lora: LoraUse, name: str, keep: set[str]) -> None:
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return
        self._trim(pipe, keep, incoming=lora.file_bytes)
        try:
            pipe.load_lora_weights(lora.path, adapter_name=name)
            present = {n for names in pipe.get_list_adapters().values() for n in names}
            if name not in present:
                raise ValueError("no LoRA weights this pipeline can use")
        except Exception as exc:  # a file diffusers cannot load fails this request, not the pipeline
            try:
                pipe.delete_adapters(name)
            except Exception:
                pass  # nothing of it was added
            raise AdapterFileError(f"LoRA {lora.name!r} ({lora.path}) cannot be loaded: {type(exc).__name__}: "
                                   f"{str(exc)[:200]}", param="loras") from exc
        self.loaded[name] = lora
        self.loads += 1
        logger.info("LoRA %s loaded (%d bytes; %d held)", lora.name, lora.file_bytes, self.bytes)

    def clear(self) -> None:
        """The pipeline is gone: nothing is loaded any more."""
        self.loaded.clear()
