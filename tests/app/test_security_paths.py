"""Issue 11 row 1: the outbound allow-list holds on the canonical path (no dot-segment or encoding trick).

The app's identity in these tests is the emulator's "bridge" identity, Azure Relay Owner on the
whole namespace: RBAC would let it send anywhere, so the allow-list is the only guard, as with
``make run``. An on-premises listener on ``inbound`` (not in RELAY_OUTBOUND_CONNECTIONS) records
everything that reaches it: nothing may. Requests are built the way the host hands them over:
``url`` is the URL as it arrived (raw path and query), route params decoded by the host.
"""

from __future__ import annotations

import json
import posixpath
import unicodedata
from urllib.parse import unquote

import azure.functions as func
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from bridge.envelope import EnvelopeError, parse_message
from bridge.http_send import relay_send
from bridge.outbound import process_outbound
from bridge.sender import SendFailure, resolve_target
from bridge.settings import get_settings, load_settings
from relay._transport import parse_address
from tests.app.conftest import drain_queue, echo_handler, onprem_listener


def raw_request(tail: str, *, method: str = "POST", body: bytes = b"x", headers=None) -> func.HttpRequest:
    """A request for ``/api/relay/{tail}`` as the host passes it: raw URL, decoded route params."""
    path, _, query = tail.partition("?")
    connection, _, rest = path.partition("/")
    params = {}
    for pair in filter(None, query.split("&")):
        key, _, value = pair.partition("=")
        params[unquote(key)] = unquote(value)
    return func.HttpRequest(
        method, f"http://localhost/api/relay/{tail}", headers=headers or {}, params=params,
        route_params={"connection": unquote(connection), "path": unquote(rest)}, body=body,
    )


TRICKS = [
    "echo/../inbound/x",
    "echo/%2e%2e/inbound/x",
    "echo/%2E%2E/inbound/x",
    "echo/.%2e/inbound/x",
    "echo/..%2Finbound/x",
    "echo%2F..%2Finbound/x",
    "echo/..%2finbound/x",
    "echo/..%5Cinbound/x",
    "echo/../inbound/x?mode=ws",
    "echo/%2e%2e/inbound/x?mode=ws",
    "echo%2F..%2Finbound?mode=ws",
    "echo/a/../../inbound",
    "echo/%252e%252e/inbound",
]


@pytest.mark.parametrize("tail", TRICKS)
async def test_path_tricks_never_reach_a_connection_outside_the_allow_list(emulator, bridge_env, tail):
    reached = []

    async def record(request):
        reached.append(request.target)
        return await echo_handler()(request)

    def accept(ctx):
        reached.append("websocket")
        return True

    async with onprem_listener(emulator, "inbound", record, accept_handler=accept), onprem_listener(emulator, "echo", echo_handler()):
        resp = await relay_send(raw_request(tail))
    assert resp.status_code in (400, 404), (resp.status_code, resp.get_body()[:300])
    body = json.loads(resp.get_body())
    assert body["error"] in ("bad_path", "unknown_connection") and body["transient"] is False
    assert body["message"]
    assert reached == []


async def test_bad_path_is_400_naming_the_rule(bridge_env):
    resp = await relay_send(raw_request("echo/%2e%2e/inbound/x"))
    assert resp.status_code == 400
    body = json.loads(resp.get_body())
    assert body["error"] == "bad_path" and "dot segment" in body["message"]


async def test_resolved_trick_is_404_for_a_connection_not_allowed(bridge_env):
    # What Azure's front end hands over after removing dot segments itself.
    resp = await relay_send(raw_request("inbound/x"))
    assert resp.status_code == 404 and json.loads(resp.get_body())["error"] == "unknown_connection"


async def test_legitimate_paths_still_work(emulator, bridge_env):
    seen = []
    async with onprem_listener(emulator, "echo", echo_handler(seen)):
        resp = await relay_send(raw_request("ECHO/a%20b/.well-known/x...y?q=a%20b&code=k&Code=K2&MODE=http"))
    assert resp.status_code == 201, resp.get_body()
    assert resp.headers["X-Echo-Path"] == "/echo/a%20b/.well-known/x...y?q=a%20b"


async def test_envelope_path_tricks_are_poisoned_and_never_sent(emulator, bridge_env, azurite):
    reached = []

    async def record(request):
        reached.append(request.target)
        return await echo_handler()(request)

    settings = get_settings()
    async with onprem_listener(emulator, "inbound", record), onprem_listener(emulator, "echo", echo_handler()):
        for path in ("/../inbound/x", "/%2e%2e/inbound/x", "/..%2Finbound", "/a/../../inbound"):
            raw = json.dumps({"connection": "echo", "path": path, "body": "x"}).encode()
            outcome = await process_outbound(settings, raw, message_id="m1", dequeue_count=1)
            assert outcome.result == "poisoned" and outcome.error == "malformed_envelope", outcome
            assert "path" in outcome.reason
    assert reached == []
    records = await drain_queue(azurite.connection_string, "relay-outbound-failed", expect=4)
    assert len(records) == 4


def test_envelope_connection_must_be_an_exact_configured_name():
    with pytest.raises(EnvelopeError, match="dot segment"):
        parse_message(json.dumps({"connection": "echo/../inbound", "body": "x"}).encode(), message_id="m", default_connection="echo")


# -- property: whatever arrives, the request goes to an allowed connection and stays under it ------

PIECES = st.sampled_from([
    "echo", "inbound", "orders", "eu", "x", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "/", "\\", ";", "%00", "%0d%0a",
    "%25", "%252e", "@", ":", "?", "#", "%", "\uff0e", "%e2%80%a4", " ", "ECHO", "Orders", "evil:1", "&code=k", "=",
])


def _hostile_resolve(encoded_path: str) -> str:
    """A lax downstream: decode twice, '\\' as '/', drop ;params, NFKC, resolve dots."""
    text = unquote(unquote(encoded_path)).replace("\\", "/")
    segments = [unicodedata.normalize("NFKC", s.split(";", 1)[0]) for s in text.split("/")]
    return posixpath.normpath("/" + "/".join(segments).lstrip("/"))


@settings(max_examples=500, deadline=None)
@given(raw=st.lists(PIECES, max_size=10).map("".join))
def test_property_allow_list_holds_for_any_request_path(raw):
    allowed = ("orders", "echo", "orders/eu")
    s = load_settings({"RELAY_NAMESPACE": "ns.example", "RELAY_OUTBOUND_CONNECTIONS": ",".join(allowed),
                       "BridgeStorage": "UseDevelopmentStorage=true"})
    try:
        connection, rest = resolve_target(s, "/" + raw)
    except SendFailure as failure:
        assert (failure.status, failure.code) in ((400, "bad_path"), (404, "unknown_connection")) and not failure.transient
        return
    assert connection in allowed
    url = URL(parse_address(s.relay_address(connection)).entity_http_url(rest), encoded=True)
    assert (url.raw_host, url.port) == ("ns.example", 443)
    resolved = _hostile_resolve(url.raw_path)
    assert resolved == f"/{connection}" or resolved.startswith(f"/{connection}/")
