"""Issue 11 rows 2 and 3: the forwarder contacts only its target, and only under its base path.

The attacks run as a sender would run them (hand-built URLs, nothing normalised on the way)
against ``python -m relay listen --forward`` as a subprocess, the real emulator, and real local
servers on 127.0.0.1: a *victim* service that must never be contacted, and the configured target.
"""

from __future__ import annotations

import pytest

from .conftest import dev_connection_string, local_service, raw_http, raw_ws, relay_cli

SEND_RULE = "send-orders"  # Send rights on hybrid connection "orders" only


def listen_env(emulator) -> dict:
    return {"RELAY_CONNECTION_STRING": dev_connection_string(emulator, "orders")}


@pytest.mark.parametrize("suffix_template", [
    "%2F@127.0.0.1:{port}/x",            # encoded '/' then user-info trick: ws://target%2F@victim/x
    "@127.0.0.1:{port}/x",               # no separator at all after the entity name
    "%2f@127.0.0.1:{port}",
    "/%2F%2F127.0.0.1:{port}/x",         # scheme-relative after decoding
])
async def test_websocket_path_cannot_reach_another_local_service(emulator, suffix_template):
    async with local_service("target") as target, local_service("victim") as victim:
        async with relay_cli("listen", "--forward", target.url, env=listen_env(emulator)):
            status, reply = await raw_ws(emulator, "orders", suffix_template.format(port=victim.port), rule=SEND_RULE)
            assert victim.seen == [], f"the forwarder contacted another local service: {victim.seen}"
            assert reply is None or not reply.startswith("victim:")
            # 400 from the forwarder at accept; the emulator itself answers 404 for "/orders@..." (no such entity).
            assert status in ((404, 400) if suffix_template.startswith("@") else (400,)), (status, reply)
            assert target.seen == []
            # Normal traffic still flows.
            status, reply = await raw_ws(emulator, "orders", "/chat?room=1", rule=SEND_RULE)
            assert (status, reply) == (101, "target:/chat?room=1:hi")


@pytest.mark.parametrize("raw", [
    "/%2e%2e/%2e%2e/admin/secret",
    "/%2E%2E/%2e%2E/admin/secret",
    "/.%2e/.%2e/admin/secret",
    "/x/..%2F..%2F..%2Fadmin/secret",
    "/%252e%252e/%252e%252e/admin/secret",
    "/..;x/..;x/admin/secret",
])
async def test_http_path_cannot_leave_the_base_path(emulator, raw):
    async with local_service("target") as target:
        async with relay_cli("listen", "--forward", f"{target.url}/public/area/", env=listen_env(emulator)):
            status, text = await raw_http(emulator, "orders", raw, rule=SEND_RULE)
            assert "SECRET" not in text
            assert not any(p.startswith("/admin") for p in target.seen), target.seen
            assert status == 400, (status, text)
            status, text = await raw_http(emulator, "orders", "/a/b?q=1", rule=SEND_RULE)
            assert (status, text) == (200, "target GET /public/area/a/b?q=1 ")


async def test_websocket_cannot_leave_the_base_path(emulator):
    async with local_service("target") as target:
        async with relay_cli("listen", "--forward", f"{target.url}/public/area/", env=listen_env(emulator)):
            status, reply = await raw_ws(emulator, "orders", "/%2e%2e/%2e%2e/admin", rule=SEND_RULE)
            assert not any(p.startswith("/admin") for p in target.seen), target.seen
            # The forwarder refuses at accept; the reject goes to the rendezvous URL byte for byte.
            assert status == 400, (status, reply)


async def test_entity_prefix_is_stripped_only_at_a_segment_boundary(emulator):
    """``/ordersX/...`` is not ``/orders/...``; the emulator routes by entity, so test resolve() directly too."""
    from relay.forward import ForwardTarget, Forwarder
    from relay.paths import PathError

    fwd = Forwarder(ForwardTarget.build("http://127.0.0.1:1/base/"), "orders")
    assert str(fwd.resolve("/orders/a?x=1")) == "http://127.0.0.1:1/base/a?x=1"
    assert str(fwd.resolve("/ORDERS")) == "http://127.0.0.1:1/base/"
    for bad in ("/ordersX/a", "/orders%2F@127.0.0.1:2/x", "/other/a", "/orders/../x"):
        with pytest.raises(PathError):
            fwd.resolve(bad)


async def test_allow_path_exposes_only_part_of_the_service(emulator):
    async with local_service("target") as target:
        async with relay_cli("listen", "--forward", target.url, "--allow-path", "/api/public",
                             "--allow-path", "/health", env=listen_env(emulator)):
            assert (await raw_http(emulator, "orders", "/api/public/x", rule=SEND_RULE))[0] == 200
            assert (await raw_http(emulator, "orders", "/health", rule=SEND_RULE))[0] == 200
            for raw in ("/api/publicity", "/api/private/x", "/admin/secret", "/"):
                status, text = await raw_http(emulator, "orders", raw, rule=SEND_RULE)
                assert status == 403 and "SECRET" not in text, (raw, status, text)
            status, _ = await raw_ws(emulator, "orders", "/api/private/ws", rule=SEND_RULE)
            assert status == 403
            status, reply = await raw_ws(emulator, "orders", "/api/public/ws", rule=SEND_RULE)
            assert (status, reply) == (101, "target:/api/public/ws:hi")
        assert target.seen == ["/api/public/x", "/health", "/api/public/ws"]


@pytest.mark.parametrize("bad, fix", [
    ("127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("localhost", "http://localhost"),
    ("ftp://127.0.0.1/", "http://127.0.0.1/"),
    ("http://user:pw@127.0.0.1:8080/", "user info"),
    ("http://127.0.0.1:8080/a/../b", "dot segment"),
])
def test_target_without_scheme_is_refused_at_start(bad, fix, capsys):
    from relay.cli import main

    try:
        code = main(["listen", "sb://127.0.0.1:9/orders", "--anonymous", "--forward", bad])
    except SystemExit as exc:  # refused by argparse while parsing --forward
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and fix in err and "--forward" in err, err
