#!/usr/bin/env bash
# Refresh constraints.txt: the exact versions CI installs (pyproject.toml keeps ranges for users).
# Resolves the project's dependencies afresh in a throw-away venv (CPU torch first, as .ci/run does) and
# freezes them. Run from the repository root: bash scripts/refresh_constraints.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python3.11 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet torch==2.13.0
"$venv/bin/pip" install --quiet -e '.[dev]'
{
  echo "# Exact versions CI installs (.ci/run). Refresh: bash scripts/refresh_constraints.sh"
  "$venv/bin/pip" freeze --exclude-editable | grep -v '^-e '
} > constraints.txt
rm -rf "$(dirname "$venv")"
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"
