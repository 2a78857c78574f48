"""The served modes as the router sees them: names, aliases, the default, and what each checkpoint is."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from serve_app.config.mode_families import inspect_mode, with_family
from serve_app.config.modes_file import ModeConfig, ModesFile, resolve_checkpoint
from serve_app.core.errors import UnknownModeError, UnsupportedCheckpointError
from serve_app.model.components.component_files import ComponentFile
from serve_app.model.families import Family
from serve_app.model.inspection.checkpoint_inspect import CheckpointInfo
from serve_app.model.inspection.checkpoint_problems import CheckpointProblem


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
            served = self.inspect(m, model_root, modes.allow_absolute_paths)
            infos[m.name] = served.info
            configs.append(served.config)
        self._fill(modes.model_copy(update={"modes": configs}), infos)

    def inspect(self, mode: ModeConfig, model_root: Path, allow_absolute: bool = False) -> ServedMode:
        """`mode` as served: its checkpoint's facts (header reads) and its family's defaults."""
        path = resolve_checkpoint(mode.checkpoint, model_root, allow_absolute=allow_absolute,
                                  source=f"mode {mode.name}")
        info, self.components[mode.name] = inspect_mode(mode, path, model_root, allow_absolute)
        if info.serving_refusal is not None:  # a mode the operator named that cannot be served
            raise UnsupportedCheckpointError(f"mode {mode.name}: {info.path}: {info.serving_refusal}",
                                             param="checkpoint")
        return ServedMode(with_family(mode, info), info)

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
        self.configured = dict(self.modes)  # as built; a checkpoint refresh changes `modes`, never this
        self._configured_state = (dict(self.aliases), self.default, list(self.problems))

    def configured_configs(self) -> list[ModeConfig]:
        """The modes the application was built with."""
        return [m.config for m in self.configured.values()]

    def set_runtime(self, added: Mapping[str, ServedMode], removed: Collection[str]) -> None:
        """The configured modes less `removed` (their checkpoint left MODEL_ROOT: listed as problems), plus
        `added` (a checkpoint refresh's). The default is the configured one while it stays, else the first
        mode left; the last configured mode is never taken out."""
        removed = [n for n in removed if n in self.configured]
        if len(removed) == len(self.configured) and not added:
            removed = removed[:-1]
        aliases, default, problems = self._configured_state
        self.modes = {n: m for n, m in self.configured.items() if n not in removed}
        self.modes.update({n: m for n, m in added.items() if n not in self.configured})
        self.aliases = {a: n for a, n in aliases.items() if n in self.modes}
        self.default = default if default in self.modes else next(iter(self.modes))
        served = {m.config.checkpoint for m in added.values()}
        self.problems = [*(p for p in problems if p.path not in served), *(CheckpointProblem(
            path=self.configured[n].config.checkpoint, error_type="checkpoint_removed",
            message=f"mode {n!r}: its checkpoint left MODEL_ROOT; refresh-checkpoints unloaded it and it is no "
                    "longer served (a redeploy drops its deployment)") for n in removed)]

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
