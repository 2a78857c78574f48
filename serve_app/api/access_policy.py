"""API keys: who is calling, and may they do this.

Client keys come as `Authorization: Bearer <key>` (what the OpenAI client sends from `api_key`) or, for
AUTOMATIC1111 clients started with `--api-auth`, as HTTP basic auth with the key as the password. The
admin key may do everything, including the operator actions (mode load/unload, default-mode switch).
Keys are kept as SHA-256 digests and compared in constant time; without client keys the API is open
and a caller is known by its address (for fair sharing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from serve_app.config.app_args import AccessConfig
from serve_app.core.errors import AuthenticationError, ConfigError, PermissionDeniedError


@dataclass(frozen=True)
class Caller:
    id: str  # `key:<digest prefix>` or `addr:<client address>`: what fair sharing counts by
    admin: bool


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _read_keys(env: str | None, file: str | None, environ: Mapping[str, str], what: str) -> list[str]:
    """Keys from an environment variable (comma-separated) and a file (one per line, `#` comments)."""
    keys: list[str] = []
    if env is not None:
        if not environ.get(env, "").strip():
            raise ConfigError(f"access.{what}_env: environment variable {env!r} is empty or not set",
                              param=f"access.{what}_env")
        keys += [k.strip() for k in environ[env].split(",") if k.strip()]
    if file is not None:
        try:
            lines = Path(file).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"access.{what}_file: cannot read {file!r}: {exc.strerror}",
                              param=f"access.{what}_file") from exc
        found = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not found:
            raise ConfigError(f"access.{what}_file: {file!r} holds no key", param=f"access.{what}_file")
        keys += found
    return keys


def presented_key(authorization: str | None) -> str | None:
    """The key of a Bearer or Basic (key = password) Authorization header; None when there is none."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            user_pass = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user_pass.partition(":")[2] or None
    return None


class AccessPolicy:
    def __init__(self, client_keys: list[str] | None = None, admin_keys: list[str] | None = None,
                 trusted_proxies: Sequence[IPv4Network | IPv6Network] = ()) -> None:
        self._client = [_digest(k) for k in client_keys or []]
        self._admin = [_digest(k) for k in admin_keys or []]
        self.trusted_proxies = list(trusted_proxies)

    @classmethod
    def from_config(cls, config: AccessConfig, environ: Mapping[str, str] = os.environ) -> AccessPolicy:
        return cls(_read_keys(config.api_keys_env, config.api_keys_file, environ, "api_keys"),
                   _read_keys(config.admin_key_env, config.admin_key_file, environ, "admin_key"),
                   config.trusted_proxies)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        return client_address(peer, forwarded_for, self.trusted_proxies)

    @property
    def keys_required(self) -> bool:
        return bool(self._client)

    @staticmethod
    def _matches(digest: bytes, known: list[bytes]) -> bool:
        found = False
        for candidate in known:  # every key is compared: the time does not tell which one matched
            found |= hmac.compare_digest(digest, candidate)
        return found

    def caller(self, authorization: str | None, address: str | None, *, admin: bool = False) -> Caller:
        """Who calls, by the `Authorization` header (see `caller_by_key`)."""
        return self.caller_by_key(presented_key(authorization), address, admin=admin)

    def caller_by_key(self, key: str | None, address: str | None, *, admin: bool = False) -> Caller:
        """Who calls with `key` (None: no key); raises 401 (no or unknown key where one is needed) or 403 (a
        client key for an operator action). With no key configured at all, everything is open."""
        digest = _digest(key) if key is not None else None
        is_admin = digest is not None and self._matches(digest, self._admin)
        is_client = is_admin or (digest is not None and self._matches(digest, self._client))
        if admin and (self._admin or self._client) and not is_admin:
            if is_client:
                raise PermissionDeniedError("this operator action needs the admin key; this is a client key")
            raise AuthenticationError("this operator action needs the admin key (Authorization: Bearer <key>)"
                                      if digest is None else "the API key is not valid")
        if self.keys_required and not is_client:
            raise AuthenticationError("a valid API key is required (Authorization: Bearer <key>)"
                                      if digest is None else "the API key is not valid")
        if is_client and digest is not None:
            return Caller(f"key:{digest.hex()[:12]}", is_admin)
        return Caller(f"addr:{address or 'unknown'}", is_admin)


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: Sequence[IPv4Network | IPv6Network]) -> str | None:
    """The client's address: the connection's peer, unless the peer is a trusted proxy, then the last
    `X-Forwarded-For` hop that is not one (hops a client wrote itself, to the left of them, are ignored)."""
    if peer is None or not trusted or not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for[:2048].split(",")]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop[:64] if _is_address(hop) else peer
    return peer


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _trusted(address: str, trusted: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in trusted)
