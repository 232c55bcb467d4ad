"""Authentication and authorization: SAS rules, Entra ID JWTs from the identity endpoint, anonymous senders."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from urllib.parse import quote

import aiohttp
import pytest

from relay import protocol as p
from relay import sas
from tests.emulator.drivers import TestListener, handshake_status, hc, sas_token, ws_connect
from tests.fixtures.emulator import identity

RELAY_SCOPE = "https://relay.azure.net/.default"


async def test_namespace_sas_listens_and_sends(emulator):
    async with TestListener(emulator, "orders", sas_token(emulator, "")):  # namespace-root sr
        async with ws_connect(emulator, hc(emulator, "orders", "connect"), sas_token(emulator, "orders")) as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"


@pytest.mark.parametrize(
    "case, expected_status, expected_text",
    [
        ("bad-key", 401, "InvalidSignature"),
        ("expired", 401, "ExpiredToken"),
        ("missing", 401, "MissingToken"),
        ("malformed", 401, "MalformedToken"),
        ("other-entity-sr", 401, "InvalidAudience"),
        ("send-rule-listens", 403, "'Listen' claim(s) are required"),
        ("entity-rule-on-other-entity", 401, "InvalidSignature"),
    ],
)
async def test_listen_refused(emulator, case, expected_status, expected_text):
    entity = "orders"
    token = {
        "bad-key": sas_token(emulator, entity, key="not-the-key"),
        "expired": sas_token(emulator, entity, now=time.time() - 7200, ttl=60),
        "missing": None,
        "malformed": "SharedAccessSignature sr=x&sig=y",
        "other-entity-sr": sas_token(emulator, "inbound"),
        "send-rule-listens": sas_token(emulator, entity, "send-orders"),
        "entity-rule-on-other-entity": sas.generate_sas_token(
            sas.sas_resource_uri(emulator.address("inbound")), "listen-orders", emulator.sas_key("listen-orders")
        ),
    }[case]
    if case == "entity-rule-on-other-entity":
        entity = "inbound"
    status, reason = await handshake_status(emulator, hc(emulator, entity, "listen"), token)
    assert status == expected_status
    assert expected_text in reason
    assert "TrackingId:" in reason and f"SystemTracker:sb://{emulator.host}/{entity}" in reason


async def test_unknown_entity_is_404(emulator):
    status, reason = await handshake_status(emulator, hc(emulator, "nope", "listen"), sas_token(emulator, "nope"))
    assert status == 404 and reason.startswith(p.MSG_ENDPOINT_NOT_FOUND)


async def test_entity_rules_and_node_sr_forms(emulator):
    node_sr = f"http://127.0.0.1:{emulator.port}/orders"  # Node keeps the port, no trailing slash
    listen = sas.generate_sas_token(node_sr, "listen-orders", emulator.sas_key("listen-orders"))
    url = hc(emulator, "orders", "listen", token=listen)  # token in sb-hc-token this time
    async with ws_connect(emulator, url):
        pass
    send = sas.generate_sas_token(node_sr + "/", "send-orders", emulator.sas_key("send-orders"))
    status, reason = await handshake_status(emulator, hc(emulator, "orders", "listen"), send)
    assert status == 403 and "'Listen'" in reason
    # sr for "orders" does not cover "orders/eu"'s sibling "ordersx", but does cover the nested "orders/eu".
    async with ws_connect(emulator, hc(emulator, "orders/eu", "listen"), sas_token(emulator, "orders")):
        pass


async def test_http_sender_auth_errors(emulator):
    async with aiohttp.ClientSession() as session:
        ssl = emulator.ssl_context()
        async with session.post(f"{emulator.http}/orders", data=b"x", ssl=ssl) as r:
            assert r.status == 401 and "MissingToken" in r.reason
        bad = sas_token(emulator, "orders", key="wrong")
        async with session.post(f"{emulator.http}/orders?sb-hc-token={quote(bad, safe='')}", data=b"x", ssl=ssl) as r:
            assert r.status == 401 and "InvalidSignature" in r.reason
        listen_only = sas_token(emulator, "orders", "listen-orders")
        async with session.post(f"{emulator.http}/orders", data=b"x", ssl=ssl,
                                headers={"Authorization": listen_only}) as r:
            assert r.status == 403 and "'Send'" in r.reason
        async with session.get(f"{emulator.http}/unknown/x", ssl=ssl) as r:
            assert r.status == 404 and p.MSG_ENDPOINT_NOT_FOUND in r.reason


async def test_anonymous_sender_on_public_but_listener_needs_auth(emulator):
    status, _ = await handshake_status(emulator, hc(emulator, "public", "listen"))
    assert status == 401
    async with TestListener(emulator, "public", sas_token(emulator, "public")):
        async with ws_connect(emulator, hc(emulator, "public", "connect")) as ws:
            await ws.send(b"anon")
            assert await ws.recv() == b"anon"
        async with aiohttp.ClientSession() as session:
            # Authorization passes through untouched when the entity does not require auth.
            async with session.post(f"{emulator.http}/public/x", data=b"hi", ssl=emulator.ssl_context(),
                                    headers={"Authorization": "Basic abc"}) as r:
                assert r.status == 200
                assert '"Authorization": "Basic abc"' in r.headers["X-Meta"]


# -- Entra ID ------------------------------------------------------------------------------------


async def _mi_token(emulator, monkeypatch, name: str) -> str:
    from azure.identity.aio import ManagedIdentityCredential

    for key, value in emulator.identity_env().items():
        monkeypatch.setenv(key, value)
    ident = identity(emulator.config, name)
    kwargs = {} if ident.get("systemAssigned") else {"client_id": ident["clientId"]}
    async with ManagedIdentityCredential(**kwargs) as credential:
        return (await credential.get_token(RELAY_SCOPE)).token


async def test_jwt_owner_on_namespace(emulator, monkeypatch):
    from azure.identity.aio import ManagedIdentityCredential

    token = await _mi_token(emulator, monkeypatch, "bridge")
    # .NET asks for "https://relay.azure.net//.default", so aud gets a trailing slash: also fine.
    async with ManagedIdentityCredential() as credential:
        slash = (await credential.get_token("https://relay.azure.net//.default")).token
    assert sas.jwt_claims(slash)["aud"] == "https://relay.azure.net/"
    async with ws_connect(emulator, hc(emulator, "inbound", "listen"), slash):
        pass
    async with TestListener(emulator, "inbound", token):
        async with ws_connect(emulator, hc(emulator, "inbound", "connect"), "Bearer " + token) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"


async def test_jwt_sender_scoped_to_one_hybrid_connection(emulator, monkeypatch):
    token = await _mi_token(emulator, monkeypatch, "sender")
    async with TestListener(emulator, "orders", sas_token(emulator, "orders")):
        async with ws_connect(emulator, hc(emulator, "orders", "connect"), token) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
    status, reason = await handshake_status(emulator, hc(emulator, "inbound", "connect"), token)
    assert status == 403 and "'Send'" in reason
    status, reason = await handshake_status(emulator, hc(emulator, "orders/eu", "connect"), token)
    assert status == 403
    status, reason = await handshake_status(emulator, hc(emulator, "orders", "listen"), token)
    assert status == 403 and "'Listen'" in reason
    async with aiohttp.ClientSession() as session:
        # HTTP: the raw JWT in Authorization (the .NET RBAC sample); no listener -> 502, so auth passed.
        async with session.get(f"{emulator.http}/orders", headers={"Authorization": token}, ssl=emulator.ssl_context()) as r:
            assert r.status == 502 and p.MSG_NO_LISTENERS in r.reason


async def test_jwt_listener_at_resource_group_scope(emulator, monkeypatch):
    token = await _mi_token(emulator, monkeypatch, "listener")
    for entity in ("orders", "inbound", "orders/eu"):
        async with ws_connect(emulator, hc(emulator, entity, "listen"), token):
            pass
    status, _ = await handshake_status(emulator, hc(emulator, "orders", "connect"), token)
    assert status == 403


async def test_jwt_without_roles_and_foreign_tokens(emulator, monkeypatch):
    token = await _mi_token(emulator, monkeypatch, "nobody")
    status, _ = await handshake_status(emulator, hc(emulator, "orders", "listen"), token)
    assert status == 403
    # Swap in the Owner's oid but keep the original signature: the signature no longer matches.
    head, _, sig = token.split(".")
    claims = sas.jwt_claims(token) | {"oid": identity(emulator.config, "bridge")["principalId"]}
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    status, reason = await handshake_status(emulator, hc(emulator, "orders", "listen"), f"{head}.{forged}.{sig}")
    assert status == 401 and "InvalidSignature" in reason
    status, reason = await handshake_status(emulator, hc(emulator, "orders", "listen"), "not-a-token")
    assert status == 401 and "MalformedToken" in reason


async def test_jwt_wrong_audience(emulator, monkeypatch):
    from azure.identity.aio import ManagedIdentityCredential

    for key, value in emulator.identity_env().items():
        monkeypatch.setenv(key, value)
    async with ManagedIdentityCredential() as credential:
        token = (await credential.get_token("https://storage.azure.com/.default")).token
    status, reason = await handshake_status(emulator, hc(emulator, "orders", "listen"), token)
    assert status == 401 and "InvalidAudience" in reason


async def test_log_never_contains_tokens_or_keys(emulator, monkeypatch):
    jwt_token = await _mi_token(emulator, monkeypatch, "bridge")
    await handshake_status(emulator, hc(emulator, "orders", "listen"), sas_token(emulator, "orders", key="bad"))
    async with TestListener(emulator, "orders", jwt_token) as listener:
        await listener.renew("SharedAccessSignature sr=x&sig=bogus&se=1&skn=y")
        await asyncio.wait_for(listener.closed, 5)
    log = emulator.log_path.read_text()
    assert "SharedAccessSignature" not in log and "sig=" not in log and "eyJ" not in log
    assert jwt_token[:20] not in log
    for rule in emulator.config["sasRules"]:
        assert rule["key"] not in log
    assert emulator.identity_header not in log
