"""The Router built with fakes, no Ray: a `Gateway` over a catalog of already-inspected checkpoints, a
`ModeClient` whose workers answer in process, and the FastAPI app `create_http_app` makes of it."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from deployments.protocol import GenerationRequest, GenerationResult, OperatorState, RegistryStats, RouterPollAnswer
from deployments.router.gateway import Gateway
from deployments.router.ingress import create_http_app
from deployments.router.mode_client import ModeClient
from serve_app.api.access_policy import AccessPolicy
from serve_app.api.adapter_catalog import AdapterCatalog
from serve_app.api.mode_catalog import ModeCatalog
from serve_app.config.modes_file import ModesFile
from serve_app.core.errors import ShuttingDownError, UnknownModeError
from serve_app.model.families import Family
from serve_app.model.generation.job import GeneratedImage
from serve_app.model.inspection.checkpoint_inspect import CheckpointFormat, CheckpointInfo

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
                       "RU5ErkJggg==")


def _info(family: Family) -> CheckpointInfo:
    return CheckpointInfo(path=f"/nowhere/{family.value}.safetensors", format=CheckpointFormat.SINGLE_FILE,
                          family=family, cross_attention_dim=768, inpainting=False, unet_in_channels=4, dtype="float32",
                          param_count=1000, param_bytes=4000, file_bytes=4000, unet_base_channels=32,
                          vae_decoder_channels=32)


class InProcessWorkers(ModeClient):
    """Mode workers that answer at once, recording which mode ran each request."""

    def __init__(self) -> None:
        super().__init__({})
        self.ran: list[tuple[str, GenerationRequest]] = []

    async def generate(self, mode: str, request: GenerationRequest) -> GenerationResult:
        self.ran.append((mode, request))
        return GenerationResult(images=[GeneratedImage(PNG, request.seeds[0], "png")], width=request.width,
                                height=request.height, steps=request.steps, scheduler=request.scheduler)


class FakeRegistry:
    """The registry's answers to a router poll: the operator state it holds."""

    def __init__(self, state: OperatorState) -> None:
        self.state = state

    waiting: dict[str, int] | None = None

    async def router_poll(self, router: str, inflight: int, state: OperatorState,
                          waiting: dict[str, int] | None = None) -> RouterPollAnswer:
        self.waiting = waiting
        return RouterPollAnswer(state=self.state, replicas={"sd1": 1, "sd2": 1})

    stats_calls = 0

    async def stats(self) -> RegistryStats:
        self.stats_calls += 1
        await asyncio.sleep(0.01)
        return RegistryStats(devices=[], draining=self.state.draining, replicas={})


def make_gateway(registry: Any = None, access: AccessPolicy | None = None) -> tuple[Gateway, InProcessWorkers]:
    modes = ModesFile.model_validate({"default_mode": "sd1", "modes": [
        {"name": "sd1", "checkpoint": "sd1.safetensors", "aliases": ["v1"]},
        {"name": "sd2", "checkpoint": "sd2.safetensors"}]})
    catalog = ModeCatalog.of(modes, {"sd1": _info(Family.SD1), "sd2": _info(Family.SD2)})
    workers = InProcessWorkers()
    return Gateway(catalog=catalog, adapters=AdapterCatalog(None), workers=workers, access=access,
                   registry=registry), workers


BODY = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2, "seed": 7}


def test_a_generation_is_admitted_runs_on_its_mode_and_is_released() -> None:
    gateway, workers = make_gateway()
    with TestClient(create_http_app(gateway)) as client:
        answer = client.post("/v1/txt2img", json={**BODY, "mode": "v1"})  # an alias
        assert answer.status_code == 200, answer.text
        assert answer.json()["mode"] == "sd1"
        assert client.post("/v1/txt2img", json={**BODY, "mode": "sd2"}).json()["mode"] == "sd2"
    assert [mode for mode, _ in workers.ran] == ["sd1", "sd2"]
    assert workers.ran[0][1].seeds == [7]
    assert gateway.inflight == 0
    assert all(queue.out == 0 for queue in gateway.queues.values())


def test_admission_counts_in_flight_work() -> None:
    gateway, _ = make_gateway()

    async def scenario() -> list[int]:
        seen = []
        async with gateway.accepting():
            seen.append(gateway.inflight)
            async with gateway.accepting():
                seen.append(gateway.inflight)
        return [*seen, gateway.inflight]

    assert asyncio.run(scenario()) == [1, 2, 0]


def test_a_draining_application_refuses_new_work() -> None:
    gateway, workers = make_gateway(registry=FakeRegistry(OperatorState(draining=True, version=1)))
    with pytest.raises(ShuttingDownError):
        asyncio.run(gateway.admit())
    assert gateway.inflight == 0
    with TestClient(create_http_app(gateway)) as client:
        refused = client.post("/v1/txt2img", json=BODY)
        assert refused.status_code == 503
        assert "shutting down" in refused.json()["error"]["message"]
        assert client.get("/readyz").json() == {"status": "draining"}
    assert workers.ran == []


def test_mode_selection_default_alias_switch_and_unknown() -> None:
    gateway, _ = make_gateway()
    assert gateway.select(None).name == "sd1"
    assert gateway.select("v1").name == "sd1"
    asyncio.run(gateway.set_default_mode("sd2"))  # no registry: this router's own switch
    assert gateway.select(None).name == "sd2"
    with pytest.raises(UnknownModeError, match="valid modes and aliases: sd1, sd2, v1"):
        gateway.select("sd9")
    with TestClient(create_http_app(gateway)) as client:
        unknown = client.post("/v1/txt2img", json={**BODY, "mode": "sd9"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["param"] == "mode"


def test_keys_are_checked_by_the_gateway_policy() -> None:
    gateway, _ = make_gateway(access=AccessPolicy(client_keys=["client-key"], admin_keys=["admin-key"]))
    with TestClient(create_http_app(gateway)) as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer client-key"}).status_code == 200
        basic = base64.b64encode(b"me:client-key").decode()
        assert client.get("/v1/models", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        assert client.post("/v1/modes/sd1/unload", headers={"Authorization": "Bearer client-key"}).status_code == 403
    # another app over an open gateway, in the same process, stays open: the policy is not process-global
    open_gateway, _ = make_gateway()
    with TestClient(create_http_app(open_gateway)) as client:
        assert client.get("/v1/models").status_code == 200


def test_the_openapi_document_declares_the_key_schemes() -> None:
    gateway, _ = make_gateway()
    with TestClient(create_http_app(gateway)) as client:
        spec = client.get("/openapi.json").json()
        docs = client.get("/docs").text
    schemes = spec["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "http", "scheme": "bearer", "description": schemes["apiKey"]["description"]}
    assert schemes["apiKeyAsPassword"]["type"] == "http" and schemes["apiKeyAsPassword"]["scheme"] == "basic"
    txt2img = spec["paths"]["/v1/txt2img"]["post"]
    assert {"apiKey": []} in txt2img["security"] and {"apiKeyAsPassword": []} in txt2img["security"]
    assert "security" not in spec["paths"]["/healthz"]["get"]  # public routes ask for no key
    assert "swagger-ui" in docs


def test_a_malformed_basic_header_gets_the_policy_answer() -> None:
    gateway, _ = make_gateway(access=AccessPolicy(client_keys=["client-key"]))
    with TestClient(create_http_app(gateway)) as client:
        for header in ("Basic !!!not-base64", "Basic " + base64.b64encode(b"no-colon").decode(), "Bearer "):
            refused = client.get("/v1/models", headers={"Authorization": header})
            assert refused.status_code == 401, header
            assert refused.json()["error"]["message"] == "a valid API key is required (Authorization: Bearer <key>)"


def test_a_flood_of_readiness_probes_costs_the_registry_one_call() -> None:
    registry = FakeRegistry(OperatorState(version=1))
    gateway, _ = make_gateway(registry=registry)

    async def probes() -> list[int]:
        transport = httpx.ASGITransport(app=create_http_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = await asyncio.gather(*(client.get("/readyz") for _ in range(25)),
                                           *(client.get("/readyz?mode=sd1") for _ in range(25)))
        return [a.status_code for a in answers]

    statuses = asyncio.run(probes())
    # the router can serve (sd1 is cold: a request waits for its load), but sd1 itself is not loaded yet
    assert statuses == [200] * 25 + [503] * 25
    assert registry.stats_calls == 1


def test_readiness_of_the_router_and_of_one_mode() -> None:
    gateway, _ = make_gateway(registry=FakeRegistry(OperatorState(version=1)))
    with TestClient(create_http_app(gateway)) as client:
        assert client.get("/readyz").json() == {"status": "ready", "default_mode": "sd1"}
        not_loaded = client.get("/readyz", params={"mode": "v1"})  # an alias names its mode
        assert not_loaded.status_code == 503
        assert not_loaded.json() == {"status": "not_ready", "mode": "sd1", "state": "cold"}
        unknown = client.get("/readyz", params={"mode": "sd9"})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "mode"


def test_the_router_is_unready_while_the_registry_does_not_answer() -> None:
    class GoneRegistry(FakeRegistry):
        async def stats(self) -> RegistryStats:
            raise TimeoutError("registry restarting")

    gateway, _ = make_gateway(registry=GoneRegistry(OperatorState(version=1)))
    with TestClient(create_http_app(gateway)) as client:
        answer = client.get("/readyz")
        assert answer.status_code == 503 and answer.json() == {"status": "registry_unreachable"}


def test_modes_list_the_samplers_and_schedule_types_they_serve() -> None:
    gateway, _ = make_gateway()
    with TestClient(create_http_app(gateway)) as client:
        modes = client.get("/v1/modes").json()["modes"]
    samplers = modes[0]["samplers"]
    assert "karras" in samplers["dpmpp_2m"] and "DPM++" not in " ".join(samplers)
    assert set(samplers) >= {"euler", "euler_a", "dpmpp_2m_sde", "ddim", "unipc", "lcm"}
