"""The router process never imports torch: everything it unpickles from workers is torch-free."""

import subprocess
import sys


def test_router_and_results_import_without_torch():
    code = ("import sys, deployments.router.ingress, serve_app.model.generation.job, deployments.protocol, "
            "serve_app.app_builder; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
