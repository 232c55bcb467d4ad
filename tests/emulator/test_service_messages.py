"""Evidence from the real service (tests/fixtures/service_messages/*.json, each naming its source):
the library parses every message, and the emulator's messages have the same shape."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from relay import protocol as p
from tests.emulator.drivers import TestListener, hc, sas_token, ws_connect

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "service_messages"
MESSAGES = {path.stem: json.loads(path.read_text()) for path in sorted(FIXTURES.glob("*.json"))}


def test_fixtures_name_their_source():
    assert len(MESSAGES) >= 7
    for name, item in MESSAGES.items():
        assert item["source"] and item["sent_by"] in ("service", "listener"), name


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_library_parses_each_captured_message(name):
    message = MESSAGES[name]["message"]
    command = p.decode_command(json.dumps(message))
    kind = next(iter(message))
    inner = message[kind]
    if kind == "accept":
        assert isinstance(command, p.AcceptCommand)
        assert (command.address, command.id) == (inner["address"], inner["id"])
        assert command.connect_headers == inner["connectHeaders"]
    elif kind == "request":
        assert isinstance(command, p.RequestCommand) and not command.is_address_only
        assert command.method == inner["method"] and command.request_target == inner["requestTarget"]
        assert command.request_headers == inner["requestHeaders"] and command.body is inner["body"]
    elif kind == "response":
        assert isinstance(command, p.ResponseCommand)
        assert command.status_code == int(inner["statusCode"]) and command.body is inner["body"]
    else:
        assert isinstance(command, p.RenewTokenCommand) and command.token == inner["token"]


def _shape(inner: dict) -> set[str]:
    return set(inner)


async def test_emulator_accept_has_the_captured_shape(emulator):
    captured = MESSAGES["captured_accept"]["message"]["accept"]
    seen: list[dict] = []

    async def record(cmd, listener):
        seen.append(cmd.to_json()["accept"])
        await TestListener.echo_accept(cmd, listener)

    token = sas_token(emulator, "echo")
    async with TestListener(emulator, "echo", token, on_accept=record):
        async with ws_connect(emulator, hc(emulator, "echo", "connect"), token) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
    ours = seen[0]
    assert _shape(ours) == _shape(captured)
    assert set(captured["connectHeaders"]) <= set(ours["connectHeaders"])
    assert ":" in ours["connectHeaders"]["Host"]  # Host with its port, as captured (":443")
    for address in (ours["address"], captured["address"]):
        parts = urlsplit(address)
        assert parts.scheme == "wss" and parts.path.startswith("/$hc/echo" if address is ours["address"] else "/$hc/")
        assert parts.query.startswith("sb-hc-action=accept&sb-hc-id=")
    assert urlsplit(ours["address"]).hostname != "127.0.0.1"  # a gateway host, not the namespace host


async def test_emulator_request_has_the_captured_shape(emulator):
    captured = MESSAGES["captured_request"]["message"]["request"]
    token = sas_token(emulator, "orders")
    async with TestListener(emulator, "orders", token) as listener:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{emulator.http}/orders", data=b'{"a":1}', ssl=emulator.ssl_context(),
                                    headers={p.HEADER_TOKEN: token, "Content-Type": "application/json; charset=utf-8"}) as r:
                assert r.status == 200
    ours = listener.requests[0][0].to_json()["request"]
    assert _shape(ours) == _shape(captured)
    headers = ours["requestHeaders"]
    assert headers["Host"] == "127.0.0.1" and headers["Via"] == "1.1 127.0.0.1"  # as captured: no port, the service's Via
    assert captured["requestHeaders"]["Host"] == captured["requestHeaders"]["Via"].split(" ", 1)[1]
    parts = urlsplit(ours["address"])
    assert parts.hostname != "127.0.0.1" and parts.query.startswith("sb-hc-action=request&sb-hc-id=")
    assert urlsplit(captured["address"]).query.startswith("sb-hc-action=request&sb-hc-id=")
