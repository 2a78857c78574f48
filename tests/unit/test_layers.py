"""Imports only run downward: builder/CLI -> deployments -> api -> config -> model -> ground.

Read from the source (every import statement, function-level ones included), so a lazy import that runs
back up fails here as surely as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP = ("serve_app.app_builder", "serve_app.cli")
# package -> modules it must never import (prefix match)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "serve_app/model": ("ray", "fastapi", "starlette", "deployments", "serve_app.api", "serve_app.config", *TOP),
    "serve_app/config": ("ray", "fastapi", "starlette", "deployments", "serve_app.api", *TOP),
    "serve_app/api": ("ray", "torch", "diffusers", "deployments", *TOP),
    "deployments": TOP,
}
GROUND = ("serve_app/core/errors.py", "serve_app/core/strict_model.py")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _violations(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in _imports(path) for bad in forbidden if name == bad or name.startswith(bad + "."))


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_layer_imports_only_downward(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    bad = {str(f.relative_to(REPO)): v for f in files if (v := _violations(f, FORBIDDEN[package]))}
    assert not bad, bad


def test_ground_imports_nothing_of_the_project() -> None:
    for rel in GROUND:
        own = [name for name in _imports(REPO / rel) if name.split(".")[0] in ("serve_app", "deployments", "ray")]
        assert not own, (rel, own)


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    from deployments.router.ingress import Router\n    import ray.serve\n")
    assert _violations(sneaky, FORBIDDEN["serve_app/model"]) == ["deployments.router.ingress", "ray.serve"]
