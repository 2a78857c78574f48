"""Every YAML in configs/ parses, and every Serve config builds into the application it describes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.app_builder import build_app
from serve_app.config.app_args import MODE_DEPLOYMENT_DEFAULTS, parse_app_args
from serve_app.config.modes_file import load_modes_file
from serve_app.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = [REPO / "configs" / "rayservice.yaml", REPO / "configs" / "networkpolicy.yaml",
              REPO / "configs" / "front-proxy.yaml"]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p not in KUBERNETES)
SERVE_CONFIGS = [p for p in CONFIGS if "applications" in (yaml.safe_load(p.read_text()) or {})]


def test_configs_exist():
    names = {p.name for p in SERVE_CONFIGS}
    assert {"demo.yaml", "gpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_yaml_parses(path):
    data = yaml.safe_load(path.read_text())
    if path in SERVE_CONFIGS:
        from ray.serve.schema import ServeDeploySchema

        ServeDeploySchema.model_validate(data)
    else:
        assert load_modes_file(path).modes


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_builds_the_application(path, demo_models_dir, monkeypatch):
    from ray.serve._private.build_app import build_app as serve_build

    monkeypatch.chdir(REPO)  # relative modes_file paths are relative to where `serve run` starts
    config = yaml.safe_load(path.read_text())
    for app_cfg in config["applications"]:
        args = dict(app_cfg["args"])
        if args.get("demo_models"):
            args["model_root"] = str(demo_models_dir)  # don't write into the checkout
        built = serve_build(build_app(args), name=app_cfg["name"])
        modes = load_modes_file(REPO / args["modes_file"]).modes
        names = {d.name for d in built.deployments}
        assert names == {"Router", "VramRegistry", "TaskStore", *(m.name for m in modes)}
        assert built.ingress_deployment_name == "Router"
        overridden = {d["name"] for d in app_cfg.get("deployments", [])}
        assert overridden <= names, "a deployments: entry names no deployment of the app"
        for d in built.deployments:
            if d.name not in ("Router", "VramRegistry", "TaskStore"):
                assert d.max_queued_requests == MODE_DEPLOYMENT_DEFAULTS["max_queued_requests"]


def test_bad_app_args_name_the_field():
    with pytest.raises(ConfigError) as err:
        parse_app_args({"registry": {"budget_bytes": -1}})
    assert err.value.param == "registry.budget_bytes" and "-1" in err.value.message
    with pytest.raises(ConfigError) as err:
        parse_app_args({"modes_fiel": "x.yaml"})
    assert err.value.param == "modes_fiel"


def test_the_rayservice_serves_gpu_yaml_on_gpu_workers_with_the_models_volume():
    manifest = yaml.safe_load(KUBERNETES[0].read_text())
    assert manifest["kind"] == "RayService" and manifest["apiVersion"] == "ray.io/v1"
    gpu = yaml.safe_load((REPO / "configs" / "gpu.yaml").read_text())
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == gpu  # the same Serve config, verbatim
    model_root = gpu["applications"][0]["args"]["model_root"]
    (worker,) = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    container = worker["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8000}
    assert {"name": "models", "mountPath": model_root, "readOnly": True} in container["volumeMounts"]
    access = gpu["applications"][0]["args"]["access"]
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert all(any(access[k].startswith(m) for m in mounts) for k in ("api_keys_file", "admin_key_file"))


def test_the_network_policy_keeps_ray_ports_to_the_cluster():
    """Every pod of the RayService is selected; nothing is open to all; 8000 to the front proxy's pods; the
    dashboard only to the operator."""
    policy = yaml.safe_load(KUBERNETES[1].read_text())
    service = yaml.safe_load(KUBERNETES[0].read_text())["spec"]["rayClusterConfig"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    templates = [service["headGroupSpec"]["template"]] + [g["template"] for g in service["workerGroupSpecs"]]
    assert all(selected.items() <= t["metadata"]["labels"].items() for t in templates)
    assert all("from" in rule for rule in policy["spec"]["ingress"])  # nothing open to everyone
    proxy_pods = next(d for d in yaml.safe_load_all(KUBERNETES[2].read_text()) if d["kind"] == "Deployment")
    proxy_labels = proxy_pods["spec"]["template"]["metadata"]["labels"]
    (to_serve,) = [r for r in policy["spec"]["ingress"] if any("podSelector" in s and s["podSelector"][
        "matchLabels"].items() <= proxy_labels.items() for s in r["from"])]
    assert [p["port"] for p in to_serve["ports"]] == [8000]
    for rule in policy["spec"]["ingress"]:
        if any(p["port"] == 8265 for p in rule.get("ports", [])):
            assert all("namespaceSelector" in source or "podSelector" in source for source in rule["from"])


def test_the_front_proxy_bounds_bodies_like_the_router_and_reaches_the_serve_service():
    """The front proxy reads a body whole (bounded in size and in the gap between reads, like the router's
    `http` limits) before Serve sees it, names the client itself, and points at the RayService's Serve service."""
    from serve_app.config.app_args import HttpLimitsConfig, WorkerTimeoutsConfig

    documents = {d["kind"]: d for d in yaml.safe_load_all(KUBERNETES[2].read_text())}
    conf = documents["ConfigMap"]["data"]["nginx.conf"]
    statements = [line.split("#")[0].strip() for line in conf.splitlines()]
    settings = dict(s.rstrip(";").split(None, 1) for s in statements if s.endswith(";") and "{" not in s)
    limits = HttpLimitsConfig()
    assert settings["client_max_body_size"] == f"{limits.max_body_bytes // 2**20}m"
    assert settings["client_body_timeout"] == f"{limits.body_idle_timeout_s:g}s"
    assert settings["proxy_request_buffering"] == "on" and settings["proxy_buffering"] == "off"
    assert int(settings["proxy_read_timeout"].rstrip("s")) > WorkerTimeoutsConfig().generate_s
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf  # replaced, never appended to
    service = yaml.safe_load(KUBERNETES[0].read_text())
    assert f"server {service['metadata']['name']}-serve-svc:8000" in conf  # KubeRay's Serve service
    selector = documents["Service"]["spec"]["selector"]
    assert selector.items() <= documents["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    gpu = yaml.safe_load((REPO / "configs" / "gpu.yaml").read_text())
    assert gpu["applications"][0]["args"]["access"]["trusted_proxies"]  # X-Forwarded-For honoured from it
