"""What a checkpoint refresh changes: the discovered checkpoints against the modes served now.

Pure (no Ray, no HTTP): given the configured modes, the modes earlier refreshes added and what discovery
finds under MODEL_ROOT now, `plan_refresh` answers the modes to add (each checkpoint not served yet, named
as discovery names it, with a suffix when the name is taken), the added modes whose checkpoint is gone,
and the configured modes whose checkpoint is gone. Checkpoints are compared by path under MODEL_ROOT, so a
mode renamed in a modes file is never added a second time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.config.modes_file import ModeConfig
from serve_app.model.inspection.checkpoint_problems import CheckpointProblem


@dataclass(frozen=True)
class AddedCheckpoint:
    """A mode an earlier refresh added (its name and checkpoint)."""

    name: str
    checkpoint: str


@dataclass
class RefreshPlan:
    add: list[ModeConfig] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)  # added modes whose checkpoint is gone
    removed: list[str] = field(default_factory=list)  # configured modes whose checkpoint is gone (all of them)
    problems: list[CheckpointProblem] = field(default_factory=list)  # what discovery does not serve


def checkpoint_key(checkpoint: str, model_root: Path) -> str:
    """A checkpoint's path under MODEL_ROOT, normalised (`./a` and `a` are one file; links are not followed)."""
    return os.path.normpath(model_root / checkpoint)


def free_name(name: str, taken: set[str]) -> str:
    """`name`, or `name-2`, `name-3`, ... when it is taken (a mode name or alias)."""
    base, n, chosen = name[:60], 2, name
    while chosen in taken:
        chosen, n = f"{base}-{n}", n + 1
    return chosen


def plan_refresh(configured: Iterable[ModeConfig], added: Iterable[AddedCheckpoint], found: Iterable[ModeConfig],
                 problems: Iterable[CheckpointProblem], model_root: Path,
                 exists: Callable[[str], bool] = os.path.exists) -> RefreshPlan:
    """`found`/`problems`: what `discover_checkpoints(model_root)` answers now; `exists`: whether a path is
    there (a configured mode may name a checkpoint discovery does not scan: a sub-folder, an absolute path)."""
    configured, added, found = list(configured), list(added), list(found)
    plan = RefreshPlan(problems=list(problems))
    found_keys = {checkpoint_key(m.checkpoint, model_root) for m in found}
    plan.removed = [m.name for m in configured if not exists(checkpoint_key(m.checkpoint, model_root))]
    served = {checkpoint_key(m.checkpoint, model_root) for m in configured}
    names = {n for m in configured for n in (m.name, *m.aliases)}
    # gone, or configured since (a redeploy discovered it): the added application is then a duplicate
    plan.drop = [m.name for m in added if checkpoint_key(m.checkpoint, model_root) not in found_keys
                 or checkpoint_key(m.checkpoint, model_root) in served or m.name in names]
    served |= {checkpoint_key(m.checkpoint, model_root) for m in added if m.name not in plan.drop}
    taken = names | {m.name for m in added if m.name not in plan.drop}
    for mode in found:
        if checkpoint_key(mode.checkpoint, model_root) in served:
            continue
        name = free_name(mode.name, taken)
        taken.add(name)
        plan.add.append(mode.model_copy(update={"name": name}))
    return plan
