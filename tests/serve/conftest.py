"""Serve tier: one real Ray (2 CPUs, 1 simulated GPU) and one Serve instance for the whole session.

The demo application is deployed from `configs/demo.yaml` the way `serve run` does (its `deployments:`
overrides included), with its paths pointed at the session's demo checkpoints. Modules that need other
shapes deploy their own small apps under their own route prefix.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

PORT = 8123
METRICS_PORT = 8127  # Ray's Prometheus endpoint of the test node
WEBHOOK_SECRET = "test-webhook-secret"  # what task webhooks are signed with in the serve tier
WEBHOOK_PORT = 8129  # the one receiver port configs/demo.yaml allows
BASE_URL = f"http://127.0.0.1:{PORT}"
REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    """`serve.shutdown()` ends every app: the shutdown tests run last."""
    items.sort(key=lambda item: item.get_closest_marker("shutdown") is not None)


def wait_ready(url: str, timeout_s: float = 240, mode: str | None = None) -> None:
    """Wait until the app at `url` can serve (`/readyz`) and, with `mode`, until that mode is loaded
    (`/readyz?mode=`: the plain probe is ready before any mode is)."""
    deadline = time.monotonic() + timeout_s
    last = None
    probe = f"{url}/readyz" + (f"?mode={mode}" if mode else "")
    while time.monotonic() < deadline:
        try:
            last = httpx.get(probe, timeout=10)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{probe} not ready: {last!r} {getattr(last, 'text', '')}")


def bearer(key: str) -> dict[str, str]:
    """The header of a request made with API key `key`."""
    return {"Authorization": f"Bearer {key}"}


def loaded_at_start(modes: dict[str, Any]) -> str | None:
    """The default mode of a modes mapping when its replicas load it on start (else None: nothing to wait
    for; a discovery app's default is known only to the app)."""
    listed = modes.get("modes") or []
    name = modes.get("default_mode") or (listed[0]["name"] if listed else None)
    mode = next((m for m in listed if m["name"] == name), None)
    if mode is None or mode.get("load_on_start") is False:
        return None
    deployment = mode.get("deployment") or {}
    scaling = deployment.get("autoscaling_config") or {}
    return None if scaling.get("min_replicas", 1) == 0 or deployment.get("num_replicas") == 0 else name


@pytest.fixture(scope="session")
def ray_serve(demo_models_dir):
    import ray
    from ray import serve

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR", _metrics_export_port=METRICS_PORT,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "DREAMLAB_WEBHOOK_SECRET": WEBHOOK_SECRET}})
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    yield
    serve.shutdown()
    ray.shutdown()


def deploy_app(name: str, modes: dict[str, Any], model_root: Path, tmp_dir: Path,
               registry: dict[str, Any] | None = None, wait: bool = True, **args: Any) -> str:
    """Deploy a Dream Lab app from a modes mapping under route prefix /<name>; returns its base URL.
    `args` are more application args (`access`, `fair_share`)."""
    from ray import serve

    from serve_app.app_builder import build_app

    args.setdefault("placement", {"default_num_gpus": 0})  # the cluster declares a GPU: unplaced modes run on CPU
    modes_file = tmp_dir / f"{name}_modes.yaml"
    modes_file.write_text(yaml.safe_dump(modes))
    app = build_app({"modes_file": str(modes_file), "model_root": str(model_root), "registry": registry or {},
                     **args})
    serve.run(app, name=name, route_prefix=f"/{name}")
    url = f"{BASE_URL}/{name}"
    if wait:
        wait_ready(url, mode=loaded_at_start(modes))
    return url


@pytest.fixture(scope="session")
def demo_url(ray_serve, demo_models_dir):
    """The demo application of configs/demo.yaml, deployed through Serve's config path."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    app = config["applications"][0]
    app["args"]["modes_file"] = str(REPO / app["args"]["modes_file"])
    app["args"]["model_root"] = str(demo_models_dir)
    client = serve_start(http_options={"host": "127.0.0.1", "port": PORT})
    client.deploy_apps(ServeDeploySchema.model_validate(config))
    client._wait_for_application_running(app["name"], timeout_s=300)
    default = yaml.safe_load(Path(app["args"]["modes_file"]).read_text())["default_mode"]
    wait_ready(BASE_URL, mode=default)
    _DEMO_DEFAULT.append(default)
    yield BASE_URL


_DEMO_DEFAULT: list[str] = []  # the demo app's configured default mode, once it runs


@pytest.fixture(scope="module", autouse=True)
def _demo_default_mode_kept(request):
    """A module that switches the shared demo app's default mode must switch it back: later modules' requests
    rely on it (a leaked switch once broke five tests far from its cause). It is restored, and the module named."""
    yield
    if not _DEMO_DEFAULT:
        return
    try:
        now = httpx.get(f"{BASE_URL}/v1/modes", timeout=30).json().get("default_mode")
    except (httpx.HTTPError, ValueError):
        return  # the demo app is not up (a module shut Serve down): nothing to keep
    if now != _DEMO_DEFAULT[0]:
        httpx.post(f"{BASE_URL}/sdapi/v1/options", json={"sd_model_checkpoint": _DEMO_DEFAULT[0]}, timeout=60)
        pytest.fail(f"{request.module.__name__} left the demo app's default mode at {now!r} "
                    f"(restored to {_DEMO_DEFAULT[0]!r})")


@pytest.fixture
def receiver():
    """A local webhook receiver: the requests it got, as (lower-cased headers, body bytes)."""
    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            got.append((headers, self.rfile.read(int(headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", WEBHOOK_PORT), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", got
    server.shutdown()


def ray_process_pid(title: str) -> int:
    """The pid of the one Ray worker process whose title (Ray sets `ray::<actor class>`) starts with `title`,
    e.g. `ray::ProxyActor` or `ray::ServeReplica:<app>:<deployment>`."""
    import psutil

    (pid,) = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
              if " ".join(p.info["cmdline"] or ()).startswith(title)]
    return int(pid)
