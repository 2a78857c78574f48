"""Hostile input against the demo application over real HTTP (through Serve's proxy): decompression-bomb
images, bodies over the cap, 20 MB bad values, seeds that run out of range mid-run, malformed Unicode.

Every one is answered by the router, in the front end's error shape, before anything is queued.

Serve's proxy sets no body limit of its own (Ray 2.60): it and the replica's receive plumbing buffer what
the client sends, and the 413 comes from the router's cap (`deployments.router.http_app.MAX_BODY_BYTES`).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import httpx
import pytest
from PIL import Image

from deployments.router.http_app import MAX_BODY_BYTES
from serve_app.model.generation.job import MAX_SEED
from tests.serve.conftest import PORT, ray_process_pid

pytestmark = pytest.mark.serve

HUGE = 20_000_000
SHORT_ERROR = 1000  # bytes


@pytest.fixture(scope="module")
def client(demo_url):
    with httpx.Client(base_url=demo_url, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def bomb() -> str:
    """A real 20000x20000 PNG: 65 KB on the wire, 400 megapixels (1.2 GB as RGB) if decoded."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_a_20000_square_png_is_422_naming_the_field_in_native_and_a1111(client, bomb):
    native = client.post("/v1/img2img", json={"prompt": "x", "image": bomb})
    assert native.status_code == 422, native.text
    assert native.json()["error"]["param"] == "image" and "too large" in native.json()["error"]["message"]
    a1111 = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [bomb]})
    assert a1111.status_code == 422, a1111.text
    assert a1111.json()["param"] == "init_images" and "`init_images`" in a1111.json()["detail"]


def test_an_image_over_the_modes_limits_is_422(client):
    buf = io.BytesIO()
    Image.new("RGB", (2048, 64)).save(buf, format="PNG")  # the demo modes take up to 256: images up to 512
    r = client.post("/v1/img2img", json={"prompt": "x", "image": base64.b64encode(buf.getvalue()).decode()})
    assert r.status_code == 422 and r.json()["error"]["param"] == "image" and "2048x64" in r.text


def _body_of(size: int) -> bytes:
    return b'{"prompt": "' + b"x" * size + b'"}'


def test_a_100_mb_body_is_413_in_native_and_a1111_shape(client):
    body = _body_of(100 * 2**20)
    headers = {"content-type": "application/json"}
    native = client.post("/v1/txt2img", content=body, headers=headers)
    assert native.status_code == 413, native.text[:500]
    err = native.json()["error"]
    assert err["param"] == "body" and str(MAX_BODY_BYTES) in err["message"]
    assert native.headers["x-request-id"]
    a1111 = client.post("/sdapi/v1/txt2img", content=body, headers=headers)
    assert a1111.status_code == 413, a1111.text[:500]
    assert a1111.json()["param"] == "body" and str(MAX_BODY_BYTES) in a1111.json()["detail"]
    openai = client.post("/v1/images/generations", content=body, headers=headers)
    assert openai.status_code == 413 and openai.json()["error"]["param"] == "body"


def test_a_chunked_body_over_the_cap_is_413(client):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"x" * 2**20
        yield b'"}'

    r = client.post("/v1/txt2img", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text[:500]
    assert r.json()["error"]["param"] == "body"


def test_the_server_still_serves_after_hostile_bodies(client):
    r = client.post("/v1/txt2img", json={"prompt": "a calm sea", "width": 64, "height": 64, "seed": 1, "steps": 2})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("route", "body", "param"), [
    ("/v1/txt2img", {"prompt": "x", "scheduler": "s" * HUGE}, "scheduler"),
    ("/v1/txt2img", {"prompt": "x" * HUGE}, "prompt"),
    ("/v1/txt2img", {"prompt": 12345, "negative_prompt": "n" * HUGE}, "prompt"),
    ("/v1/images/generations", {"prompt": "x", "size": "9" * HUGE}, "size"),
    ("/v1/images/generations", {"prompt": "x", "model": "m" * HUGE}, "model"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "s" * HUGE}, "sampler_name"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "negative_prompt": "n" * HUGE}, "negative_prompt"),
])
def test_a_20_mb_bad_value_gives_an_error_of_a_few_hundred_bytes(client, route, body, param):
    r = client.post(route, json=body)
    assert r.status_code in (400, 422), r.text[:500]
    assert len(r.content) < SHORT_ERROR, r.content[:500]
    data = r.json()
    got = data["param"] if route.startswith("/sdapi") else data["error"]["param"]
    assert got == param


def _sd1_last_use(client) -> list[float]:
    return sorted(m["last_use"] for dev in client.get("/v1/registry").json()["devices"] for m in dev["models"]
                  if m["mode"] == "sd1")


def test_a1111_seed_past_the_range_mid_run_is_refused_before_any_batch(client):
    before = _sd1_last_use(client)
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": MAX_SEED, "n_iter": 2, "width": 64, "height": 64,
                                                "override_settings": {"sd_model_checkpoint": "sd1"}})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["param"] == "seed" and str(MAX_SEED) in body["detail"]
    assert str(MAX_SEED + 1) not in body["detail"]  # never a value the client did not send
    time.sleep(2)  # four heartbeats: a generation would have moved sd1's last use
    assert _sd1_last_use(client) == before


@pytest.mark.parametrize(("route", "field"), [
    ("/v1/txt2img", "prompt"), ("/v1/txt2img", "negative_prompt"), ("/sdapi/v1/txt2img", "prompt"),
    ("/v1/images/generations", "prompt")])
def test_a_lone_surrogate_is_422_naming_the_field(client, route, field):
    raw = {"prompt": "a cat", field: "PLACEHOLDER"}
    text = json.dumps(raw).replace("PLACEHOLDER", "\\ud800")  # raw JSON text: `"\ud800"`
    r = client.post(route, content=text.encode(), headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    data = r.json()
    param = data["param"] if route.startswith("/sdapi") else data["error"]["param"]
    assert param == field
    # and the mode that would have tokenized it still serves
    ok = client.post("/v1/txt2img", json={"prompt": "a cat", "width": 64, "height": 64, "steps": 2})
    assert ok.status_code == 200, ok.text


def _replica_ids(client, modes: tuple[str, ...]) -> dict[str, set[str]]:
    replicas = client.get("/v1/registry").json()["replicas"]
    return {mode: {rid for rid, r in replicas.items() if r["mode"] == mode} for mode in modes}


def test_a_hostile_batch_leaves_every_replica_in_place(client, bomb):
    """Every case above, several times: the same replicas serve afterwards (no restart) and still answer."""
    fixed = ("sd1", "sd2")  # the demo's modes with a fixed replica count (the others autoscale)
    before = _replica_ids(client, fixed)
    assert all(before.values()), before
    surrogate = json.dumps({"prompt": "PLACEHOLDER"}).replace("PLACEHOLDER", "\\ud800").encode()
    for _ in range(3):
        assert client.post("/v1/img2img", json={"prompt": "x", "image": bomb}).status_code == 422
        assert client.post("/v1/txt2img", content=_body_of(60 * 2**20),
                           headers={"content-type": "application/json"}).status_code == 413
        assert client.post("/v1/txt2img", json={"prompt": "x", "scheduler": "s" * HUGE}).status_code == 422
        assert client.post("/v1/txt2img", content=surrogate,
                           headers={"content-type": "application/json"}).status_code == 422
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": MAX_SEED, "n_iter": 2}).status_code == 422
        lms = {"prompt": "x", "mode": "sd2", "scheduler": "lms", "width": 64, "height": 64, "steps": 2}
        assert client.post("/v1/txt2img", json=lms).status_code == 200
    time.sleep(12)  # more than a health-check period (10 s): a broken replica would be replaced by now
    assert _replica_ids(client, fixed) == before
    states = {m["name"]: m["state"] for m in client.get("/v1/modes").json()["modes"]}
    assert states["sd1"] == states["sd2"] == "ready", states
    ok = client.post("/v1/txt2img", json={"prompt": "a calm sea", "width": 64, "height": 64, "seed": 1, "steps": 2})
    assert ok.status_code == 200, ok.text


def _open_body(path: str, headers: str) -> socket.socket:
    import socket

    sock = socket.create_connection(("127.0.0.1", PORT), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}\r\n".encode())
    return sock


def _status_of(sock: socket.socket) -> int:
    head = sock.recv(4096).split(b"\r\n", 1)[0]  # b"HTTP/1.1 413 ..."
    return int(head.split()[1])


def _rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def test_slow_bodies_hold_no_one_else_up(client):
    """200 connections trickling bodies byte by byte: their client gets its share of bodies arriving (8), the
    rest 503 at once; health checks and another client's generation are answered in under a second
    meanwhile."""
    small = {"prompt": "after", "steps": 2, "width": 64, "height": 64, "mode": "sd1"}
    assert client.post("/v1/txt2img", json=small).status_code == 200  # sd1 warm before the clock starts
    slow = [_open_body("/v1/txt2img", "Content-Length: 100000\r\n") for _ in range(200)]
    # another client: another source address (no keys here, so clients are told apart by address)
    other = httpx.Client(base_url=client.base_url, timeout=60,
                         transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    try:
        for sock in slow:
            sock.sendall(b"{")
        time.sleep(1.0)
        started = time.perf_counter()
        assert other.get("/healthz").status_code == 200
        healthz_s = time.perf_counter() - started
        started = time.perf_counter()
        generated = other.post("/v1/txt2img", json=small)
        txt2img_s = time.perf_counter() - started
        assert generated.status_code == 200, generated.text
        assert healthz_s < 1.0 and txt2img_s < 1.0, (healthz_s, txt2img_s)
        answered = []
        for sock in slow:
            sock.settimeout(0.3)
            try:
                answered.append(_status_of(sock))
            except TimeoutError:
                pass  # still arriving: one of the client's 8 bodies
        assert len(answered) >= 200 - 8 and set(answered) == {503}, answered  # the demo's per-client bound
    finally:
        other.close()
        for sock in slow:
            sock.close()
    assert client.post("/v1/txt2img", json=small).status_code == 200


def test_an_endless_body_to_a_route_that_takes_none_is_refused_unread(client):
    """Up to 1 GiB of chunked body, sent as fast as loopback takes it, to a route that takes no body: a 413
    before 64 MiB went out, and neither Serve's proxy nor the router replica grew by more than 64 MiB."""
    import threading

    pids = {"proxy": ray_process_pid("ray::ProxyActor"), "router": ray_process_pid("ray::ServeReplica:dreamlab:Router")}
    before = {name: _rss(pid) for name, pid in pids.items()}
    peak = dict(before)
    sampling = True

    def sample() -> None:
        while sampling:
            for name, pid in pids.items():
                peak[name] = max(peak[name], _rss(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sock = _open_body("/v1/modes/sd1/load", "Transfer-Encoding: chunked\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
    sent = 0
    try:
        sock.settimeout(0.05)
        while sent < 2**30:  # at most 1 GiB: the answer comes long before
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            try:
                if sock.recv(64, socket.MSG_PEEK):
                    break
            except TimeoutError:
                continue
        sock.settimeout(30)
        assert _status_of(sock) == 413
        assert sent < 64 * 2**20, sent
    finally:
        sock.close()
        time.sleep(0.5)
        sampling = False
        sampler.join()
    growth = {name: (peak[name] - before[name]) / 2**20 for name in pids}
    assert all(mib < 64 for mib in growth.values()), growth
