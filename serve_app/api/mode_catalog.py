"""The served modes as the router sees them: names, aliases, the default, and what each checkpoint is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serve_app.config.mode_families import inspect_mode, with_family
from serve_app.config.modes_file import ModeConfig, ModesFile, resolve_checkpoint
from serve_app.core.errors import UnknownModeError, UnsupportedCheckpointError
from serve_app.model.components.component_files import ComponentFile
from serve_app.model.families import Family
from serve_app.model.inspection.checkpoint_inspect import CheckpointInfo


@dataclass
class ServedMode:
    config: ModeConfig
    info: CheckpointInfo

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def family(self) -> Family:
        return self.config.family or self.info.family

    def estimate_bytes(self) -> int:
        dtype = "fp32" if self.config.dtype == "auto" else self.config.dtype  # the router cannot see the device
        return self.config.vram_estimate(self.info, dtype).total_bytes


class ModeCatalog:
    """Mode selection: explicit name, alias, or the default; unknown names list the valid ones."""

    def __init__(self, modes: ModesFile, model_root: Path) -> None:
        """Reads every mode's checkpoint header under `model_root`."""
        infos = {}
        self.components: dict[str, list[ComponentFile]] = {}
        configs = []
        for m in modes.modes:
            path = resolve_checkpoint(m.checkpoint, model_root, allow_absolute=modes.allow_absolute_paths,
                                      source=f"mode {m.name}")
            info, self.components[m.name] = inspect_mode(m, path, model_root, modes.allow_absolute_paths)
            if info.serving_refusal is not None:  # a mode the operator named that cannot be served
                raise UnsupportedCheckpointError(f"mode {m.name}: {info.path}: {info.serving_refusal}",
                                                 param="checkpoint")
            infos[m.name] = info
            configs.append(with_family(m, info))
        self._fill(modes.model_copy(update={"modes": configs}), infos)

    @classmethod
    def of(cls, modes: ModesFile, infos: Mapping[str, CheckpointInfo]) -> ModeCatalog:
        """A catalog of checkpoints already inspected (`infos`: mode name -> its checkpoint's facts)."""
        catalog = cls.__new__(cls)
        catalog.components = {}
        catalog._fill(modes, infos)
        return catalog

    def _fill(self, modes: ModesFile, infos: Mapping[str, CheckpointInfo]) -> None:
        self.modes: dict[str, ServedMode] = {m.name: ServedMode(m, infos[m.name]) for m in modes.modes}
        self.problems = list(modes.problems)  # files discovery found and does not serve
        self.aliases = {a: m.name for m in modes.modes for a in m.aliases}
        self.default = self.aliases.get(modes.default_mode or "", modes.default_mode) or modes.modes[0].name

    def names(self) -> list[str]:
        return list(self.modes)

    def select(self, name: str | None, param: str = "mode") -> ServedMode:
        if name is None or name == "":
            return self.modes[self.default]
        key = self.aliases.get(name, name)
        if key not in self.modes:
            valid = ", ".join([*self.modes, *self.aliases])
            raise UnknownModeError(f"unknown mode {name!r}; valid modes and aliases: {valid}", param=param)
        return self.modes[key]
