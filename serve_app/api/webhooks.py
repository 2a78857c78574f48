"""Task webhooks: only to allowed hosts, signed, retried with backoff.

The body is the finished task as JSON; `X-DreamLab-Signature: sha256=<hex>` is the HMAC-SHA256 of those
exact bytes with the configured secret (the receiver recomputes it), `X-DreamLab-Task` names the task.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from serve_app.config.app_args import TasksConfig
from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import quote

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-DreamLab-Signature"
TIMEOUT_S = 10.0


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_secret(config: TasksConfig) -> str | None:
    return os.environ.get(config.webhook_secret_env) or None


def check_webhook(url: str, config: TasksConfig, field: str = "webhook") -> str:
    """`url` if webhooks may call it (http/https, a host on the allow-list, a secret configured)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise RequestValidationError(f"`{field}` must be an http(s) URL, got {quote(url)}", param=field)
    allowed = any(host == h.lower() or (h.startswith(".") and host.endswith(h.lower()))
                  for h in config.webhook_allowed_hosts)
    if not allowed:
        raise RequestValidationError(f"`{field}` host {quote(host)} is not on this server's webhook allow-list "
                                     f"({', '.join(config.webhook_allowed_hosts) or 'empty'})", param=field)
    if webhook_secret(config) is None:
        raise RequestValidationError(f"`{field}`: webhooks are off on this server (no signing secret in "
                                     f"${config.webhook_secret_env})", param=field)
    return url


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def deliver(url: str, body: bytes, task_id: str, config: TasksConfig) -> tuple[bool, int, str | None]:
    """POST `body` until a 2xx answer, at most `webhook_attempts` times: (delivered, attempts, last error)."""
    secret = webhook_secret(config) or ""
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, secret), "X-DreamLab-Task": task_id}
    error: str | None = None
    for attempt in range(1, config.webhook_attempts + 1):
        try:
            status = await asyncio.to_thread(_post, url, body, headers)
            if 200 <= status < 300:
                return True, attempt, None
            error = f"HTTP {status}"
        except (OSError, ValueError) as exc:  # refused, unreachable, timed out
            error = f"{type(exc).__name__}: {exc}"[:200]
        logger.warning("webhook of task %s, attempt %d: %s", task_id, attempt, error)
        if attempt < config.webhook_attempts:
            await asyncio.sleep(config.webhook_backoff_s * 2 ** (attempt - 1))
    return False, config.webhook_attempts, error
