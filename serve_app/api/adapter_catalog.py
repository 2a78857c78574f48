"""The adapters under MODEL_ROOT as the router sees them: listed for clients, and what a request's LoRAs,
embeddings and VAE resolve against (rescanned on `refresh`, e.g. A1111's `POST /sdapi/v1/refresh-loras`).

An embedding is used by naming it in a prompt, as in A1111. The match is case-insensitive and anywhere in the
text because that is how the CLIP tokenizer matches the token a loaded embedding adds: resolving the same way
means a replica that holds an embedding gives a prompt exactly the embeddings a fresh replica would load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from serve_app.config.modes_file import ModeConfig
from serve_app.core.errors import RequestValidationError, UnknownAdapterError
from serve_app.core.strict_model import quote
from serve_app.model.families import Family
from serve_app.model.generation.job import AdapterFile, LoraUse
from serve_app.model.inspection.adapter_inspect import AdapterInfo, AdapterKind, AdapterProblem, discover_adapters

logger = logging.getLogger(__name__)


class LoraRequest(Protocol):
    """What resolution needs of a requested LoRA (the native `LoraRef` is one)."""

    name: str
    weight: float


class AdapterCatalog:
    def __init__(self, model_root: Path | None) -> None:
        self.root = model_root
        self.adapters: list[AdapterInfo] = []
        self.problems: list[AdapterProblem] = []
        self.refresh()

    def refresh(self) -> None:
        if self.root is not None:
            self.adapters, self.problems = discover_adapters(self.root)
        for problem in self.problems:
            logger.warning("adapter %s cannot be used: %s", problem.path, problem.error)

    def of_kind(self, kind: AdapterKind) -> list[AdapterInfo]:
        return [a for a in self.adapters if a.kind is kind]

    def relative(self, path: str) -> str:
        """`path` as clients see it: relative to MODEL_ROOT (no server paths in answers)."""
        if self.root is None:
            return Path(path).name
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return Path(path).name

    def public(self) -> tuple[list[AdapterInfo], list[AdapterProblem]]:
        """The adapters and problems with their paths relative to MODEL_ROOT."""
        return ([a.model_copy(update={"path": self.relative(a.path)}) for a in self.adapters],
                [p.model_copy(update={"path": self.relative(p.path)}) for p in self.problems])

    def resolve_loras(self, refs: Sequence[LoraRequest], mode: ModeConfig, family: Family,
                      name: Callable[[str], str] = lambda f: f) -> list[LoraUse]:
        """The files and weights of a request's LoRAs, checked against the mode's limits and family.

        `name` gives the client's own name of a native field (A1111 clients put LoRAs in the prompt)."""
        field = name("loras")

        def where(i: int, part: str) -> str:
            return field if field != "loras" else f"loras[{i}].{part}"

        lim = mode.limits
        if len(refs) > lim.max_loras:
            raise RequestValidationError(f"`{field}` asks for {len(refs)} LoRAs; mode {mode.name!r} applies at most "
                                         f"{lim.max_loras} per request", param=field)
        loras = {a.name: a for a in self.of_kind(AdapterKind.LORA)}
        used: list[LoraUse] = []
        for i, ref in enumerate(refs):
            if not -lim.max_lora_weight <= ref.weight <= lim.max_lora_weight:
                raise RequestValidationError(
                    f"`{where(i, 'weight')}` {quote(ref.weight)} for LoRA {quote(ref.name)} must be between "
                    f"{-lim.max_lora_weight} and {lim.max_lora_weight}", param=where(i, "weight"))
            lora = loras.get(ref.name)
            if lora is None:
                mine = sorted(a.name for a in loras.values() if a.family is family)
                raise UnknownAdapterError(
                    f"LoRA {quote(ref.name)} not found; LoRAs for {family.value}: {', '.join(mine) or 'none'}",
                    param=where(i, "name"))
            if lora.family is not family:
                raise RequestValidationError(
                    f"LoRA {quote(ref.name)} is made for {lora.family.value if lora.family else 'another family'}; "
                    f"mode {mode.name!r} is {family.value}", param=where(i, "name"))
            used.append(LoraUse(name=lora.name, path=lora.path, weight=ref.weight, file_bytes=lora.file_bytes))
        return used


    def resolve_embeddings(self, family: Family, *prompts: str) -> list[AdapterFile]:
        """The embeddings of `family` whose names appear in any of `prompts` (see the module docstring)."""
        text = " ".join(prompts).lower()
        return [AdapterFile(name=a.name, path=a.path, file_bytes=a.file_bytes)
                for a in self.of_kind(AdapterKind.EMBEDDING)
                if a.family is family and a.name.lower() in text and not any(c.isspace() for c in a.name)]

    def resolve_vae(self, requested: str, mode: ModeConfig, field: str = "vae") -> AdapterFile:
        """The VAE file a request names, if the mode allows it."""
        if requested not in mode.vaes:
            raise RequestValidationError(f"`{field}` {quote(requested)} is not a VAE of mode {mode.name!r}; it "
                                         f"allows: {', '.join(mode.vaes) or 'none (its checkpoint VAE only)'}",
                                         param=field)
        vae = next((a for a in self.of_kind(AdapterKind.VAE) if a.name == requested), None)
        if vae is None:
            found = sorted(a.name for a in self.of_kind(AdapterKind.VAE))
            raise UnknownAdapterError(f"VAE {quote(requested)} not found under vae/; there: "
                                      f"{', '.join(found) or 'none'}", param=field)
        return AdapterFile(name=vae.name, path=vae.path, file_bytes=vae.file_bytes)


NO_ADAPTERS = AdapterCatalog(None)
