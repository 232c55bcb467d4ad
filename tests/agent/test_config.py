"""The agent's config file: validation names every bad key; environment overrides; the shipped example."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.agent.config import ConfigError, env_name, load_config

from .conftest import REPO_ROOT

GOOD = """
[[connections]]
name = "orders"
address = "sb://contoso.servicebus.windows.net/orders"
target = "http://127.0.0.1:8080"
[connections.credential]
type = "managed_identity"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


def problems(tmp_path: Path, text: str, environ: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ or {})
    return info.value.problems


def test_minimal_config_and_defaults(tmp_path):
    config = load_config(write(tmp_path, GOOD), {})
    (conn,) = config.connections
    assert conn.name == "orders" and str(conn.target.base) == "http://127.0.0.1:8080"
    assert conn.target.websockets and conn.target.timeout == 30 and conn.target.max_concurrency == 100
    assert (config.log_format, config.health_enabled, config.health_host) == ("text", False, "127.0.0.1")


def test_every_bad_key_is_named(tmp_path):
    text = """
[agent]
log_format = "xml"
colour = "blue"
drain_timeout = -1

[health]
enabled = "yes"
port = 70000

[[connections]]
name = "orders"
address = "sb://contoso.servicebus.windows.net/orders"
target = "127.0.0.1:8080"
retries = 3
[connections.credential]
type = "managed_identity"
secret = "x"

[[connections]]
name = "orders"
address = "sb://contoso.servicebus.windows.net/other"
target = "http://127.0.0.1:8081"

[[connections]]
name = "dup-address"
address = "sb://contoso.servicebus.windows.net/ORDERS2"
target = "http://127.0.0.1:8082"

[[connections]]
name = "dup-address-2"
address = "sb://contoso.servicebus.windows.net/orders2"
target = "http://127.0.0.1:8082"

[[connections]]
name = "bad-bits"
address = "sb://contoso.servicebus.windows.net/x"
target = "http://127.0.0.1:8083/a/../b"
allow_paths = ["/api/%2e%2e"]
timeout = 90
[connections.credential]
type = "client_secret"
client_id = "c"

[[connections]]
name = "no-target"
address = "sb://contoso.servicebus.windows.net/y"
[connections.credential]
type = "magic"
"""
    found = "\n".join(problems(tmp_path, text))
    for key in ("agent.log_format", "agent.colour: unknown key", "agent.drain_timeout", "health.enabled", "health.port",
                "connections[orders].target", "http://127.0.0.1:8080", "connections[orders].retries: unknown key",
                "connections[orders].credential.secret: unknown key", "connections[orders].name: duplicate",
                "connections[dup-address-2].address", "already served", "connections[bad-bits].credential.tenant_id",
                "connections[bad-bits].credential.client_secret_env", "connections[no-target].credential.type"):
        assert key in found, f"{key!r} not in:\n{found}"


@pytest.mark.parametrize("target, key", [
    ('"http://127.0.0.1:8083/a/../b"', "target"),
    ('"http://127.0.0.1:8083"\nallow_paths = ["/api/%2e%2e"]', "allow_paths"),
    ('"http://127.0.0.1:8083"\ntimeout = 90', "timeout"),
])
def test_target_problems_name_their_key(tmp_path, target, key):
    text = GOOD.replace('"http://127.0.0.1:8080"', target)
    (problem,) = problems(tmp_path, text)
    assert problem.startswith(f"connections[orders].{key}:"), problem


def test_secrets_come_from_the_environment(tmp_path):
    text = GOOD.replace('type = "managed_identity"', 'type = "connection_string"\nconnection_string_env = "ORDERS_CS"')
    assert "environment variable ORDERS_CS is not set" in problems(tmp_path, text)[0]
    cs = "Endpoint=sb://contoso.servicebus.windows.net/;EntityPath=orders;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0"
    config = load_config(write(tmp_path, text), {"ORDERS_CS": cs})
    assert config.connections[0].address == "sb://contoso.servicebus.windows.net/orders"
    assert "c2VjcmV0" not in repr(config)
    other = cs.replace("EntityPath=orders", "EntityPath=billing")
    assert "differs from the connection string" in problems(tmp_path, text, {"ORDERS_CS": other})[0]
    assert "Unknown" in problems(tmp_path, text, {"ORDERS_CS": cs + ";Colour=blue"})[0] or \
        "colour" in problems(tmp_path, text, {"ORDERS_CS": cs + ";Colour=blue"})[0].lower()


def test_environment_overrides(tmp_path):
    text = GOOD.replace('name = "orders"', 'name = "orders-eu"')
    env = {
        "RELAY_AGENT__AGENT__LOG_FORMAT": "json",
        "RELAY_AGENT__HEALTH__ENABLED": "true",
        "RELAY_AGENT__HEALTH__PORT": "9191",
        f"RELAY_AGENT__CONNECTIONS__{env_name('orders-eu')}__TARGET": "http://orders-svc:8080/base/",
        "RELAY_AGENT__CONNECTIONS__ORDERS_EU__ALLOW_PATHS": '["/api"]',
        "RELAY_AGENT__CONNECTIONS__ORDERS_EU__CREDENTIAL__CLIENT_ID": "11111111-1111-1111-1111-111111111111",
        "UNRELATED": "x",
    }
    config = load_config(write(tmp_path, text), env)
    (conn,) = config.connections
    assert (config.log_format, config.health_enabled, config.health_port) == ("json", True, 9191)
    assert str(conn.target.base) == "http://orders-svc:8080/base/" and conn.target.allow_paths[0].path == "/api"
    assert conn.credential.get("client_id") == "11111111-1111-1111-1111-111111111111"
    found = problems(tmp_path, text, {"RELAY_AGENT__CONNECTIONS__BILLING__TARGET": "http://x", "RELAY_AGENT__FOO": "1",
                                      "RELAY_AGENT__HEALTH__PORT": "abc"})
    joined = "\n".join(found)
    assert "RELAY_AGENT__CONNECTIONS__BILLING__TARGET: no connection named 'BILLING'" in joined
    assert "RELAY_AGENT__FOO: not a known override" in joined
    assert "health.port" in joined


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"), {})
    assert "not valid TOML" in problems(tmp_path, "[[connections]\n")[0]
    assert "at least one [[connections]]" in problems(tmp_path, "[agent]\n")[0]


def test_shipped_example_is_valid():
    config = load_config(str(REPO_ROOT / "deploy" / "agent.example.toml"), {})
    assert [c.name for c in config.connections] == ["orders", "invoices"]


def test_cli_refuses_a_bad_config_with_exit_2(tmp_path, capsys):
    from relay.cli import main

    code = main(["agent", "--config", write(tmp_path, GOOD.replace("http://127.0.0.1:8080", "127.0.0.1:8080"))])
    err = capsys.readouterr().err
    assert code == 2 and "connections[orders].target" in err and "http://127.0.0.1:8080" in err


async def test_check_probes_every_target_and_names_the_unreachable_one(tmp_path):
    import asyncio
    import sys

    from .conftest import local_service

    async with local_service("svc") as svc:
        async with local_service("gone") as gone:
            dead = gone.url
        text = GOOD.replace("http://127.0.0.1:8080", svc.url) + GOOD.replace('"orders"', '"billing"').replace(
            "/orders", "/billing").replace("http://127.0.0.1:8080", dead)

        async def check(config: str) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "relay", "agent", "--config", write(tmp_path, config), "--check",
                stderr=asyncio.subprocess.PIPE, cwd=str(REPO_ROOT))
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            return proc.returncode, err.decode()

        code, err = await check(text)
        assert code == 1 and f"connections[billing].target: {dead} is not reachable" in err
        assert "connections[orders]" not in err
        code, err = await check(GOOD.replace("http://127.0.0.1:8080", svc.url))
        assert code == 0 and "all targets reachable" in err
