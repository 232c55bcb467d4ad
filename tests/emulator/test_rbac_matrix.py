"""The RBAC matrix over real sockets: each role x each scope x listen/send, allowed and denied.

One emulator holds an identity per (role, scope level, covering?) cell: the assignment's
scope either covers hybrid connection ``orders`` (the hybrid connection itself, its
namespace, resource group or subscription) or is a sibling that does not (another hybrid
connection, namespace, resource group or subscription). Each test fetches that identity's
token from the identity endpoint with ``client_id`` and tries to listen (WebSocket), send
over WebSocket and send over HTTP. Allowed sends name a listener that does not exist
(``Microsoft-Relay-AllowedListeners``), so they end in the filter's 404 right after auth.
"""

from __future__ import annotations

import itertools
import uuid

import aiohttp
import pytest
import pytest_asyncio

from emulator.config import ROLE_LISTENER, ROLE_OWNER, ROLE_SENDER
from relay import protocol as p
from relay import sas
from tests.emulator.drivers import TestListener, handshake_status, hc, ws_connect
from tests.fixtures.emulator import start_emulator

SUB, OTHER_SUB, RG, NS = str(uuid.uuid4()), str(uuid.uuid4()), "rg-rbac", "contoso"
NS_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Relay/namespaces/{NS}"
ROLES = {"Owner": ROLE_OWNER, "Listener": ROLE_LISTENER, "Sender": ROLE_SENDER}
RIGHTS = {"Owner": {"listen", "send"}, "Listener": {"listen"}, "Sender": {"send"}}
SCOPES = {  # scope level -> (covers hybrid connection "orders", a sibling that does not)
    "hybridConnection": (f"{NS_ID}/hybridConnections/orders", f"{NS_ID}/hybridConnections/inbound"),
    "namespace": (NS_ID, f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Relay/namespaces/fabrikam"),
    "resourceGroup": (f"/subscriptions/{SUB}/resourceGroups/{RG}", f"/subscriptions/{SUB}/resourceGroups/rg-other"),
    "subscription": (f"/subscriptions/{SUB}", f"/subscriptions/{OTHER_SUB}"),
}
CELLS = list(itertools.product(ROLES, SCOPES, (True, False)))


def _cell_name(role: str, level: str, covering: bool) -> str:
    return f"{role}-{level}-{'covering' if covering else 'sibling'}"


def _config() -> dict:
    identities, assignments = [], []
    for i, (role, level, covering) in enumerate(CELLS):
        name = _cell_name(role, level, covering)
        client_id, principal = str(uuid.uuid4()), str(uuid.uuid4())
        identities.append({"name": name, "clientId": client_id, "principalId": principal})
        # Alternate the display name and the role-definition GUID: both must resolve the same.
        assignments.append({"principalId": principal, "role": f"Azure Relay {role}" if i % 2 else ROLES[role],
                            "scope": SCOPES[level][0 if covering else 1]})
    return {
        "namespace": NS, "subscriptionId": SUB, "resourceGroup": RG,
        "hybridConnections": [{"name": "orders"}, {"name": "inbound"}],
        "identities": identities, "roleAssignments": assignments,
        "acceptTimeoutSeconds": 2,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rbac_emulator():
    """The matrix emulator, with one Owner listener on ``orders`` for the whole module so that
    authorized sends reach listener selection (and its AllowedListeners 404)."""
    async with start_emulator(_config(), tls=False) as emu:
        async with aiohttp.ClientSession() as session:
            owner = await _token(emu, session, "Owner-namespace-covering")
        async with TestListener(emu, "orders", owner):
            yield emu


async def _token(emu, session: aiohttp.ClientSession, name: str) -> str:
    client_id = next(i["clientId"] for i in emu.config["identities"] if i["name"] == name)
    params = {"api-version": "2019-08-01", "resource": sas.RELAY_AUDIENCE, "client_id": client_id}
    async with session.get(emu.identity_endpoint, params=params, headers={"X-IDENTITY-HEADER": emu.identity_header}) as r:
        assert r.status == 200
        body = await r.json()
    assert body["client_id"] == client_id
    return body["access_token"]


@pytest.mark.parametrize("role, level, covering", CELLS, ids=[_cell_name(*c) for c in CELLS])
async def test_rbac_matrix(rbac_emulator, role, level, covering):
    emu = rbac_emulator
    nobody = {p.HEADER_ALLOWED_LISTENERS: "no-such-listener"}
    async with aiohttp.ClientSession() as session:
        token = await _token(emu, session, _cell_name(role, level, covering))

        may_listen = covering and "listen" in RIGHTS[role]
        if may_listen:
            async with ws_connect(emu, hc(emu, "orders", "listen"), token):
                pass
        else:
            status, reason = await handshake_status(emu, hc(emu, "orders", "listen"), token)
            assert status == 403 and "'Listen' claim(s) are required" in reason, (status, reason)

        may_send = covering and "send" in RIGHTS[role]
        status, reason = await handshake_status(emu, hc(emu, "orders", "connect"), token, headers=nobody)
        if may_send:
            assert status == 404 and reason.startswith(p.MSG_LISTENER_FILTER), (status, reason)
        else:
            assert status == 403 and "'Send' claim(s) are required" in reason, (status, reason)

        async with session.post(p.entity_url(emu.http, "orders"), data=b"x",
                                headers={"Authorization": f"Bearer {token}", **nobody}) as r:
            if may_send:
                assert r.status == 404 and r.reason.startswith(p.MSG_LISTENER_FILTER)
            else:
                assert r.status == 403 and "'Send'" in r.reason


async def test_rbac_scope_is_per_hybrid_connection_and_listen_then_send(rbac_emulator):
    """A hybrid-connection scope grants nothing on a sibling; an Owner can listen and relay to itself."""
    emu = rbac_emulator
    async with aiohttp.ClientSession() as session:
        sender = await _token(emu, session, "Sender-hybridConnection-covering")
        owner = await _token(emu, session, "Owner-namespace-covering")
    status, _ = await handshake_status(emu, hc(emu, "inbound", "connect"), sender)
    assert status == 403
    async with TestListener(emu, "inbound", owner):
        async with ws_connect(emu, hc(emu, "inbound", "connect"), owner) as ws:
            await ws.send("rbac ok")
            assert await ws.recv() == "rbac ok"
