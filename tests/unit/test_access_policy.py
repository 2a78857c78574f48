"""API keys: bearer and basic forms, client vs admin, keys from the environment or a file."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from serve_app.api.access_policy import AccessPolicy, presented_key
from serve_app.config.app_args import AccessConfig
from serve_app.core.errors import AuthenticationError, ConfigError, PermissionDeniedError


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_presented_key_forms() -> None:
    assert presented_key("Bearer sk-1") == "sk-1"
    assert presented_key(_basic("webui", "sk-2")) == "sk-2"
    assert presented_key("Basic !!!not-base64") is None
    assert presented_key("Token sk-3") is None and presented_key(None) is None


def test_open_without_keys() -> None:
    policy = AccessPolicy()
    assert policy.caller(None, "10.0.0.7").id == "addr:10.0.0.7"
    assert policy.caller(None, "10.0.0.7", admin=True).id == "addr:10.0.0.7"  # the demo: operator actions open


def test_client_and_admin_keys() -> None:
    policy = AccessPolicy(["client-a", "client-b"], ["root"])
    a, b = policy.caller("Bearer client-a", "x"), policy.caller(_basic("u", "client-b"), "x")
    assert a.id.startswith("key:") and a.id != b.id and not a.admin
    assert policy.caller("Bearer root", "x", admin=True).admin
    with pytest.raises(AuthenticationError):
        policy.caller(None, "x")
    with pytest.raises(AuthenticationError, match="not valid"):
        policy.caller("Bearer client-c", "x")
    with pytest.raises(PermissionDeniedError):
        policy.caller("Bearer client-a", "x", admin=True)
    with pytest.raises(AuthenticationError):
        policy.caller(None, "x", admin=True)


def test_admin_key_alone_protects_only_operator_actions() -> None:
    policy = AccessPolicy([], ["root"])
    assert policy.caller(None, "1.2.3.4").id == "addr:1.2.3.4"
    with pytest.raises(AuthenticationError):
        policy.caller("Bearer guess", "1.2.3.4", admin=True)
    assert policy.caller("Bearer root", "1.2.3.4", admin=True).admin


def test_keys_from_environment_and_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# client keys\nfile-key\n\n")
    policy = AccessPolicy.from_config(AccessConfig(api_keys_env="DL_KEYS", api_keys_file=str(keys),
                                                   admin_key_env="DL_ADMIN"),
                                      environ={"DL_KEYS": "env-1, env-2", "DL_ADMIN": "root"})
    for key in ("env-1", "env-2", "file-key", "root"):
        policy.caller(f"Bearer {key}", None)
    with pytest.raises(AuthenticationError):
        policy.caller("Bearer # client keys", None)


@pytest.mark.parametrize(("config", "param"), [
    (AccessConfig(api_keys_env="DL_MISSING"), "access.api_keys_env"),
    (AccessConfig(admin_key_file="/nonexistent/keys"), "access.admin_key_file"),
])
def test_a_named_but_empty_key_source_is_a_config_error(config: AccessConfig, param: str) -> None:
    with pytest.raises(ConfigError) as err:
        AccessPolicy.from_config(config, environ={})
    assert err.value.param == param


def test_forwarded_for_is_honoured_only_from_trusted_proxies() -> None:
    from ipaddress import ip_network

    from serve_app.api.access_policy import client_address

    proxies = [ip_network("10.0.0.0/8")]
    assert client_address("203.0.113.5", "198.51.100.7", []) == "203.0.113.5"  # none trusted: the peer
    assert client_address("203.0.113.5", "198.51.100.7", proxies) == "203.0.113.5"  # an untrusted peer lies
    assert client_address("10.0.0.2", "198.51.100.7", proxies) == "198.51.100.7"
    # the client wrote its own X-Forwarded-For: the proxy appended the real address after it
    assert client_address("10.0.0.2", "1.2.3.4, 198.51.100.7, 10.0.0.9", proxies) == "198.51.100.7"
    assert client_address("10.0.0.2", "not-an-address", proxies) == "10.0.0.2"
    assert client_address("10.0.0.2", None, proxies) == "10.0.0.2"
