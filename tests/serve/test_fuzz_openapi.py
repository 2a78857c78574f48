"""A bounded schemathesis run against the demo's own `/openapi.json`: no input may get a 5xx, and every
answer must have the content type the schema declares (JSON errors everywhere).

Generation routes (tasks included) get invalid input only (valid input at the demo's limits would spend
the run on denoising); the other routes get both, except `/readyz`, whose 503 is an answer.
`DREAMLAB_FUZZ_EXAMPLES` sets the examples per operation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.serve

EXAMPLES = os.environ.get("DREAMLAB_FUZZ_EXAMPLES", "25")
GENERATION = (r"^/(v1/(txt2img|img2img|inpaint|txt2img/stream|jobs/.*|images/generations|images/edits|tasks)"
              r"|sdapi/v1/(txt2img|img2img))$")
# /readyz answers 503 whenever the default mode is not on its device (evicted by an earlier test's load):
# that is its job, not a server error.
READINESS = r"^/readyz$"


def _schemathesis() -> str:
    found = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    assert Path(found).exists(), "schemathesis is a dev dependency: pip install -e '.[dev]'"
    return found


def _run(demo_url: str, tmp_path: Path, mode: str, *selection: str) -> None:
    cmd = [_schemathesis(), "run", f"{demo_url}/openapi.json", "--checks",
           "not_a_server_error,content_type_conformance", "--mode", mode, "--max-examples", EXAMPLES,
           "--phases", "examples,coverage,fuzzing", "--generation-deterministic", "--request-timeout", "120",
           "--workers", "2", "--report", "junit", "--report-dir", str(tmp_path), *selection]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its cache goes there
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


def test_invalid_input_to_every_route_never_gets_a_server_error(demo_url, tmp_path):
    _run(demo_url, tmp_path, "negative")


def test_any_input_to_the_cheap_routes_never_gets_a_server_error(demo_url, tmp_path):
    _run(demo_url, tmp_path, "positive", "--exclude-path-regex", f"{GENERATION}|{READINESS}")
