"""Pure logic: the outbound envelope, header allow-lists, routing rules and connection resolution."""

from __future__ import annotations

import base64
import json

import pytest

from bridge.envelope import EnvelopeError, parse_message
from bridge.headers import inbound_headers, request_headers, response_headers
from bridge.routing import Route, route
from bridge.sender import SendFailure, resolve_connection
from bridge.settings import load_settings


def parse(value, **kw):
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return parse_message(raw, message_id="qid", default_connection="orders", **kw)


def test_full_envelope():
    m = parse({"id": "e1", "connection": "billing", "path": "/a?b=1", "method": "put",
               "headers": {"Content-Type": "text/csv", "Authorization": "x", "X-Tenant": "t"}, "body": "a,b"})
    assert (m.id, m.connection, m.method, m.path.target, m.body, m.is_envelope) == ("e1", "billing", "PUT", "/a?b=1", b"a,b", True)
    assert m.headers == {"Content-Type": "text/csv", "X-Tenant": "t", "Idempotency-Key": "e1"}


def test_body_variants():
    assert parse({"bodyBase64": base64.b64encode(b"\x00\xff").decode()}).body == b"\x00\xff"
    m = parse({"connection": "orders", "body": {"n": 1}})
    assert m.body == b'{"n":1}' and m.headers["Content-Type"] == "application/json"
    assert parse({"connection": "orders"}).body == b""


@pytest.mark.parametrize("raw", [b"hello", b'{"orderId": 1}', b"[1,2]", b"\xff\x00", b'"just a string"'])
def test_plain_messages_go_to_the_default_connection_unchanged(raw):
    m = parse(raw)
    assert (m.connection, m.method, m.path.target, m.body, m.is_envelope, m.id) == ("orders", "POST", "/", raw, False, "qid")
    assert m.headers["Idempotency-Key"] == "qid"


@pytest.mark.parametrize(
    "envelope, words",
    [
        ({"connection": 5}, "connection"),
        ({"connection": "o", "path": "no-slash"}, "path"),
        ({"connection": "o", "method": "FETCH"}, "method"),
        ({"connection": "o", "headers": {"a": 1}}, "headers"),
        ({"connection": "o", "bodyBase64": "***"}, "bodyBase64"),
        ({"connection": "o", "id": ""}, "id"),
        ({"connection": "o", "extra": 1}, "unknown envelope key"),
    ],
)
def test_malformed_envelopes(envelope, words):
    with pytest.raises(EnvelopeError, match=words):
        parse(envelope)


def test_header_allow_lists():
    incoming = {"Content-Type": "a/b", "Accept": "x", "Authorization": "t", "x-functions-key": "k", "Cookie": "c",
                "X-Forwarded-For": "ip", "X-MS-Client-Principal": "p", "X-Custom": "1", "X-Relay-Mode": "ws",
                "User-Agent": "u", "ServiceBusAuthorization": "s", "X-Api-Token": "t", "traceparent": "00-1"}
    assert request_headers(incoming) == {"Content-Type": "a/b", "Accept": "x", "X-Custom": "1", "traceparent": "00-1"}
    out = response_headers({"Content-Type": "a/b", "Set-Cookie": "s", "ETag": "e", "X-Echo": "1", "Server": "iis", "Location": "l"})
    assert out == {"Content-Type": "a/b", "ETag": "e", "X-Echo": "1"}
    assert inbound_headers({"Authorization": "x", "Content-Type": "y", "X-A": "b"}) == {"Content-Type": "y", "X-A": "b"}


def test_routing_first_match_wins():
    routes = (Route("orders-in", path_prefix="/orders"), Route("eu-in", header="X-Route", value="eu"),
              Route("only-b", header="X-Any", connection="b"))
    r = lambda path, headers=None, connection="a": route(routes, "default", connection=connection, path=path, headers=headers or {})
    assert r("/orders") == r("/orders/7") == "orders-in"
    assert r("/orders-archive") == "default"  # segment boundary
    assert r("/orders", {"x-route": "eu"}) == "orders-in"  # first match
    assert r("/x", {"x-route": "eu"}) == "eu-in" and r("/x", {"X-Route": "us"}) == "default"
    assert r("/x", {"X-Any": ""}) == "default" and r("/x", {"X-Any": ""}, connection="b") == "only-b"


def test_connection_resolution():
    s = load_settings({"RELAY_NAMESPACE": "ns.servicebus.windows.net", "RELAY_OUTBOUND_CONNECTIONS": "orders,orders/eu",
                       "BridgeStorage": "UseDevelopmentStorage=true"})
    assert resolve_connection(s, "orders", "eu/x/y") == ("orders/eu", "/x/y")
    assert resolve_connection(s, "orders", "") == ("orders", "/")
    assert resolve_connection(s, "orders", "europe") == ("orders", "/europe")
    with pytest.raises(SendFailure) as caught:
        resolve_connection(s, "billing", "x")
    assert caught.value.status == 404 and "RELAY_OUTBOUND_CONNECTIONS" in caught.value.message
