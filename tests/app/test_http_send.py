"""HTTP send (relay_send) called directly with func.HttpRequest, against the emulator (real Relay protocol,
real managed-identity tokens) and an on-premises listener from the relay library."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import aiohttp
import azure.functions as func

from bridge import sender
from bridge.http_send import relay_send
from tests.fixtures.emulator import TEST_CONFIG, identity, start_emulator

from .conftest import echo_handler, onprem_listener


def http_request(connection: str, path: str = "", *, body: bytes = b"", method: str = "POST", headers=None, params=None):
    """As the host builds it: the URL carries the path and query as sent; params and route params decoded."""
    query = f"?{urlencode(params)}" if params else ""
    return func.HttpRequest(
        method, f"http://localhost/api/relay/{connection}/{path}{query}", headers=headers or {}, params=params or {},
        route_params={"connection": connection, "path": path}, body=body,
    )


async def tokens_issued(emulator) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(emulator.identity_endpoint.rsplit("/msi", 1)[0] + "/stats") as resp:
            return (await resp.json())["tokens_issued"]


async def test_forwards_body_allowlisted_headers_and_returns_the_listener_answer(emulator, bridge_env):
    seen = []
    async with onprem_listener(emulator, "orders", echo_handler(seen)):
        req = http_request(
            "orders", "api/items", body=b'{"n": 1}',
            headers={"Content-Type": "application/json", "Authorization": "Bearer caller-secret", "x-functions-key": "k",
                     "Cookie": "a=b", "X-Custom": "yes", "X-Forwarded-For": "1.2.3.4", "Idempotency-Key": "abc"},
            params={"code": "function-key", "q": "1"},
        )
        resp = await relay_send(req)
    assert resp.status_code == 201
    assert resp.get_body() == b'{"n": 1}'
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["X-Echo-Path"] == "/orders/api/items?q=1"  # the function key never leaves
    assert "Set-Cookie" not in resp.headers and "X-Ms-Internal" not in resp.headers
    request = seen[0]
    assert request.method == "POST"
    names = {k.lower() for k in request.headers}
    assert {"content-type", "x-custom", "idempotency-key"} <= names
    assert not names & {"authorization", "x-functions-key", "cookie", "x-forwarded-for"}


async def test_connection_names_with_a_slash_resolve_by_longest_match(emulator, bridge_env):
    async with onprem_listener(emulator, "orders/eu", echo_handler()):
        resp = await relay_send(http_request("orders", "eu/x", body=b"eu"))
    assert resp.status_code == 201 and resp.headers["X-Echo-Path"] == "/orders/eu/x"


async def test_one_token_per_process_for_many_sends(emulator, bridge_env):
    before = await tokens_issued(emulator)
    async with onprem_listener(emulator, "echo", echo_handler()):
        for i in range(5):
            resp = await relay_send(http_request("echo", f"n/{i}", body=b"x"))
            assert resp.status_code == 201
    assert await tokens_issued(emulator) - before == 1
    assert len(sender._clients) == 1  # one pooled client per connection


async def test_unknown_connection_is_404(bridge_env):
    resp = await relay_send(http_request("billing", "x"))
    assert resp.status_code == 404
    assert json.loads(resp.get_body())["error"] == "unknown_connection"


async def test_connection_missing_in_the_namespace_is_404(bridge_env):
    resp = await relay_send(http_request("ghost", "x", body=b"1"))
    assert resp.status_code == 404
    body = json.loads(resp.get_body())
    assert body["error"] == "unknown_connection" and "ghost" in body["message"]


async def test_no_listener_is_503_with_retry_after(bridge_env):
    resp = await relay_send(http_request("echo", "x", body=b"1"))
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == str(sender.RETRY_AFTER_SECONDS)
    assert json.loads(resp.get_body())["error"] == "no_listener"


async def test_missing_sender_role_is_500_naming_the_role_and_connection(emulator, bridge_env):
    bridge_env(RELAY_CLIENT_ID=identity(emulator.config, "sender")["clientId"])  # Sender on "orders" only
    async with onprem_listener(emulator, "echo", echo_handler()):
        resp = await relay_send(http_request("echo", "x", body=b"1"))
    assert resp.status_code == 500
    body = json.loads(resp.get_body())
    assert body["error"] == "relay_forbidden"
    assert "Azure Relay Sender role" in body["message"] and "'echo'" in body["message"]
    assert "eyJ" not in body["message"]  # never a token


async def test_user_assigned_identity_with_the_role_can_send(emulator, bridge_env):
    bridge_env(RELAY_CLIENT_ID=identity(emulator.config, "sender")["clientId"])
    async with onprem_listener(emulator, "orders", echo_handler()):
        resp = await relay_send(http_request("orders", "", body=b"ok"))
    assert resp.status_code == 201


async def test_body_over_the_limit_is_413(bridge_env):
    resp = await relay_send(http_request("echo", "x", body=b"x" * (sender.MAX_BODY_BYTES + 1)))
    assert resp.status_code == 413


async def test_listener_error_statuses_pass_through(emulator, bridge_env):
    from relay.listener import RelayedHttpResponse

    async def refuse(request):
        return RelayedHttpResponse(422, headers={"Content-Type": "text/plain"}, body=b"bad order")

    async with onprem_listener(emulator, "echo", refuse):
        resp = await relay_send(http_request("echo", "x", body=b"1"))
    assert resp.status_code == 422 and resp.get_body() == b"bad order"


async def test_websocket_mode_sends_one_message_and_answers_202(emulator, bridge_env):
    import asyncio

    received = asyncio.get_running_loop().create_future()
    async with onprem_listener(emulator, "echo") as listener:
        async def take():
            stream = await listener.accept()
            async with stream:
                received.set_result((await stream.receive(), stream.url))

        task = asyncio.create_task(take())
        resp = await relay_send(http_request("echo", "chat", body=b'{"hi": 1}', headers={"Content-Type": "application/json"},
                                             params={"mode": "ws"}))
        message, url = await asyncio.wait_for(received, 10)
        await task
    assert resp.status_code == 202
    assert message == '{"hi": 1}'  # JSON goes as a text message
    assert url.endswith("/echo/chat")


async def test_listener_timeout_is_504(bridge_env):
    cfg = json.loads(json.dumps(TEST_CONFIG))
    cfg["responseTimeoutSeconds"] = 1
    async with start_emulator(cfg) as emu:
        bridge_env(RELAY_NAMESPACE=emu.host, RELAY_CA_FILE=emu.ca_cert, **emu.identity_env())
        import asyncio
        from relay.listener import RelayedHttpResponse

        async def slow(request):
            await asyncio.sleep(1.5)
            return RelayedHttpResponse(200)

        async with onprem_listener(emu, "echo", slow):
            resp = await relay_send(http_request("echo", "x", body=b"1"))
    assert resp.status_code == 504
    assert json.loads(resp.get_body())["error"] == "listener_timeout"


async def test_settings_error_is_500_with_the_setting_name(bridge_env, monkeypatch):
    monkeypatch.delenv("RELAY_NAMESPACE")
    resp = await relay_send(http_request("orders", "x"))
    assert resp.status_code == 500
    assert "RELAY_NAMESPACE" in json.loads(resp.get_body())["message"]


async def test_a_token_from_a_foreign_issuer_is_500_token_refused(emulator, bridge_env):
    async with start_emulator(TEST_CONFIG) as other:
        bridge_env(**other.identity_env())  # a token signed by another "tenant": the namespace refuses it (401)
        async with onprem_listener(emulator, "echo", echo_handler()):
            resp = await relay_send(http_request("echo", "x", body=b"1"))
    assert resp.status_code == 500
    body = json.loads(resp.get_body())
    assert body["error"] == "relay_token_refused" and "RELAY_CLIENT_ID" in body["message"]


async def test_identity_endpoint_failure_is_500_identity_unavailable(bridge_env):
    bridge_env(IDENTITY_HEADER="wrong-secret")
    resp = await relay_send(http_request("echo", "x", body=b"1"))
    assert resp.status_code == 500
    body = json.loads(resp.get_body())
    assert body["error"] == "identity_unavailable" and body["transient"] is True
