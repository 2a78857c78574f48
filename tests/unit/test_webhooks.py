"""Webhook targets and deliveries against a real local receiver: the allow-list names scheme, host and port,
loopback needs an allowed network, redirects are not followed, and what a client sees names no socket error."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from serve_app.api.webhooks import check_webhook, deliver
from serve_app.config.app_args import TasksConfig
from serve_app.core.errors import RequestValidationError

SECRET = "unit-secret"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREAMLAB_WEBHOOK_SECRET", SECRET)


@pytest.fixture
def receiver() -> Iterator[tuple[int, list[tuple[str, bytes, dict[str, str]]]]]:
    """A local HTTP server: `/hook` answers 204, `/moved` redirects to `/hook`; every request is recorded."""
    got: list[tuple[str, bytes, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            got.append((self.path, body, {k.lower(): v for k, v in self.headers.items()}))
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/hook")
            else:
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port, got
    server.shutdown()


def _config(port: int, networks: tuple[str, ...] = ("127.0.0.0/8",)) -> TasksConfig:
    return TasksConfig(webhook_allowed_hosts=[f"http://127.0.0.1:{port}", "https://hooks.example.com",
                                              ".example.org"],
                       webhook_allowed_networks=list(networks), webhook_attempts=2, webhook_backoff_s=0.01)


def test_the_allow_list_names_scheme_host_and_port() -> None:
    config = _config(9000)
    assert check_webhook("http://127.0.0.1:9000/hook", config)
    assert check_webhook("https://hooks.example.com/x", config)
    assert check_webhook("https://a.example.org/x", config)  # a subdomain, default port
    for url, why in [("http://127.0.0.1:8265/api/jobs/", "allow-list"),  # the Ray dashboard's port
                     ("http://hooks.example.com/x", "allow-list"),  # https only
                     ("https://hooks.example.com:8443/x", "allow-list"),
                     ("https://a.example.org:22/x", "allow-list"),
                     ("ftp://hooks.example.com/x", r"http\(s\) URL")]:
        with pytest.raises(RequestValidationError, match=why) as info:
            check_webhook(url, config)
        assert info.value.param == "webhook"


def test_loopback_needs_an_allowed_network() -> None:
    with pytest.raises(RequestValidationError, match="network webhooks may not reach"):
        check_webhook("http://127.0.0.1:9000/hook", _config(9000, networks=()))


def test_a_delivery_is_signed(receiver) -> None:
    port, got = receiver
    delivered, attempts, outcome = asyncio.run(deliver(f"http://127.0.0.1:{port}/hook", b'{"a":1}', "t1",
                                                       _config(port)))
    assert (delivered, attempts, outcome) == (True, 1, None)
    path, body, headers = got[0]
    assert path == "/hook" and body == b'{"a":1}' and headers["x-dreamlab-task"] == "t1"
    assert headers["x-dreamlab-signature"] == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def test_redirects_are_not_followed(receiver) -> None:
    port, got = receiver
    delivered, attempts, outcome = asyncio.run(deliver(f"http://127.0.0.1:{port}/moved", b"{}", "t2", _config(port)))
    assert not delivered and attempts == 2
    assert [path for path, _, _ in got] == ["/moved", "/moved"]  # never /hook
    assert outcome == "failed: no 2xx answer after 2 attempt(s)"


def test_a_target_resolving_to_a_forbidden_network_is_refused_without_a_request(receiver) -> None:
    port, got = receiver
    config = _config(port, networks=())  # `localhost` resolves to loopback, which is not allowed here
    config.webhook_allowed_hosts.append(f"http://localhost:{port}")
    delivered, _, outcome = asyncio.run(deliver(f"http://localhost:{port}/hook", b"{}", "t3", config))
    assert not delivered and outcome == "refused: the target is not one this server may call"
    assert got == []


def test_an_unreachable_target_fails_without_naming_the_socket_error() -> None:
    config = _config(1)  # nothing listens on port 1
    delivered, attempts, outcome = asyncio.run(deliver("http://127.0.0.1:1/hook", b"{}", "t4", config))
    assert not delivered and attempts == 2 and outcome == "failed: no 2xx answer after 2 attempt(s)"
