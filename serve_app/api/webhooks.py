"""Task webhooks: only to allowed targets, signed, never redirected, retried with backoff.

The body is the finished task as JSON; `X-DreamLab-Signature: sha256=<hex>` is the HMAC-SHA256 of those
exact bytes with the configured secret (the receiver recomputes it), `X-DreamLab-Task` names the task.

A webhook is a request the server makes on a client's behalf, so it is held to what the operator allowed:
- the allow-list entry names scheme, host and port (`https://hooks.example.com`, `http://10.0.0.5:9000`,
  `.example.com` for subdomains; no port means the scheme's default port), so an allowed host does not
  open its other ports (the Ray dashboard's job API on 8265, say);
- the host is resolved once per delivery and every address it resolves to must be public unless it lies in
  a network the operator allowed (`webhook_allowed_networks`); the request then goes to that address, so a
  second lookup cannot point it elsewhere (DNS rebinding);
- redirects are not followed (a 3xx is a failed attempt), and what the client sees of a delivery is
  `delivered`, `refused` or `failed`: socket errors stay in the server log (they would map the network).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt, wait_exponential

from serve_app.config.app_args import TasksConfig
from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import quote

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-DreamLab-Signature"
TIMEOUT_S = 10.0
DEFAULT_PORTS = {"http": 80, "https": 443}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(Exception):
    """The target is not one the operator allowed (found at delivery: what its host resolves to)."""


class _NotDelivered(Exception):
    """One attempt without a 2xx answer (retried)."""


@dataclass(frozen=True)
class AllowedTarget:
    """One allow-list entry: `[scheme://]host[:port]`; no scheme: http or https; no port: the default."""

    scheme: str | None
    host: str
    port: int | None

    @classmethod
    def parse(cls, entry: str) -> AllowedTarget:
        parts = urlsplit(entry if "://" in entry else f"//{entry}")
        return cls(parts.scheme.lower() or None, (parts.hostname or "").lower(), parts.port)

    def admits(self, scheme: str, host: str, port: int) -> bool:
        if self.scheme is not None and scheme != self.scheme:
            return False
        if port != (self.port if self.port is not None else DEFAULT_PORTS[scheme]):
            return False
        return host == self.host or (self.host.startswith(".") and host.endswith(self.host))


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_secret(config: TasksConfig) -> str | None:
    return os.environ.get(config.webhook_secret_env) or None


def _address_allowed(address: Address, config: TasksConfig) -> bool:
    if any(address in network for network in config.webhook_allowed_networks):
        return True
    return address.is_global and not address.is_multicast


def check_webhook(url: str, config: TasksConfig, field: str = "webhook") -> str:
    """`url` if webhooks may call it (http/https, scheme + host + port on the allow-list, a literal address
    in an allowed range, a signing secret configured)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in DEFAULT_PORTS or not host:
        raise RequestValidationError(f"`{field}` must be an http(s) URL, got {quote(url)}", param=field)
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise RequestValidationError(f"`{field}` has a bad port: {quote(url)}", param=field) from None
    targets = [AllowedTarget.parse(entry) for entry in config.webhook_allowed_hosts]
    if not any(t.admits(parts.scheme, host, port) for t in targets):
        raise RequestValidationError(
            f"`{field}` target {quote(f'{parts.scheme}://{host}:{port}')} is not on this server's webhook "
            f"allow-list ({', '.join(config.webhook_allowed_hosts) or 'empty'})", param=field)
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None and not _address_allowed(literal, config):
        raise RequestValidationError(f"`{field}` address {quote(host)} is in a network webhooks may not reach",
                                     param=field)
    if webhook_secret(config) is None:
        raise RequestValidationError(f"`{field}`: webhooks are off on this server (no signing secret in "
                                     f"${config.webhook_secret_env})", param=field)
    return url


async def resolve_target(host: str, port: int, config: TasksConfig) -> Address:
    """The address to deliver to: every address `host` resolves to must be allowed (one lookup)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise WebhookRefused(f"{host} resolves to no address")
    bad = [str(a) for a in addresses if not _address_allowed(a, config)]
    if bad:
        raise WebhookRefused(f"{host} resolves to {', '.join(bad)}, in a network webhooks may not reach")
    return addresses[0]


async def _post_once(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str],
                     config: TasksConfig) -> None:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    address = await resolve_target(host, port, config)
    netloc = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    try:
        response = await client.post(pinned, content=body, headers={**headers, "Host": parts.netloc},
                                     extensions={"sni_hostname": host})
    except httpx.HTTPError as exc:
        raise _NotDelivered(f"{type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:  # a 3xx too: redirects are not followed
        raise _NotDelivered(f"HTTP {response.status_code}")


async def deliver(url: str, body: bytes, task_id: str, config: TasksConfig) -> tuple[bool, int, str | None]:
    """POST `body` until a 2xx answer, at most `webhook_attempts` times: (delivered, attempts, outcome), the
    outcome `None` when delivered, else `refused: ...` or `failed: ...` in words a client may see."""
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, webhook_secret(config) or ""),
               "X-DreamLab-Task": task_id}
    attempts = 0
    retrying = AsyncRetrying(stop=stop_after_attempt(config.webhook_attempts),
                             wait=wait_exponential(multiplier=config.webhook_backoff_s, min=config.webhook_backoff_s),
                             retry=retry_if_exception_type(_NotDelivered))
    async with httpx.AsyncClient(follow_redirects=False, timeout=TIMEOUT_S, trust_env=False) as client:
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    try:
                        await _post_once(client, url, body, headers, config)
                    except _NotDelivered as exc:
                        logger.warning("webhook of task %s, attempt %d: %s", task_id, attempts, exc)
                        raise
            return True, attempts, None
        except WebhookRefused as exc:
            logger.warning("webhook of task %s refused: %s", task_id, exc)
            return False, attempts, "refused: the target is not one this server may call"
        except (RetryError, OSError) as exc:  # OSError: the name did not resolve
            logger.warning("webhook of task %s not delivered: %s", task_id, exc)
            return False, attempts, f"failed: no 2xx answer after {attempts} attempt(s)"
