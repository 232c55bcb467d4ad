"""HTTP senders: inline and rendezvous requests and responses, header rules, 502/504, management GET."""

from __future__ import annotations

import asyncio
import json
import os
from urllib.parse import quote

import aiohttp
import pytest
from multidict import CIMultiDict

from relay import protocol as p
from tests.emulator.drivers import TestListener, sas_token


async def _post(emu, path: str, data=None, *, method: str = "POST", headers=None, token: str | None = None):
    headers = CIMultiDict(headers or {})
    if token is not None:
        headers[p.HEADER_TOKEN] = token
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{emu.http}{path}", data=data, headers=headers,
                                   ssl=emu.ssl_context() if emu.ca_cert else None) as r:
            return r.status, r.reason, r.headers, await r.read()


async def test_inline_request_shape_and_response(emulator):
    token = sas_token(emulator, "orders")
    async with TestListener(emulator, "orders", token) as listener:
        query = f"sb-hc-token={quote(token, safe='')}&a=1&a=2&&sb-hc-id=7&sb-hc-flag"
        status, reason, headers, body = await _post(
            emulator, f"/orders/sub/path?{query}", b"hello",
            headers={"Authorization": "Basic keep-me", "X-Multi": "1", "Connection": "keep-alive"},
        )
        # Repeated headers are folded (aiohttp sends a list as repeated lines).
        status2, *_ = await _post(emulator, "/orders", b"", headers=[("X-Rep", "a"), ("X-Rep", "b")], token=token)
    assert status == 200 and reason == "Custom Reason" and body == b"hello"
    assert headers["Via"] == f"1.1 {emulator.host}"
    meta = json.loads(headers["X-Meta"])
    assert meta["method"] == "POST"
    assert meta["target"] == "/orders/sub/path?a=1&a=2&&sb-hc-flag"
    sent = {k.lower(): v for k, v in meta["headers"].items()}
    assert sent["authorization"] == "Basic keep-me"  # the token came from sb-hc-token, so it stays
    # As Azure forwards them: Host without the port, and the service's Via hop in the request.
    assert sent["x-multi"] == "1" and sent["host"] == "127.0.0.1" and sent["via"] == "1.1 127.0.0.1"
    assert "connection" not in sent and "content-length" not in sent and "servicebusauthorization" not in sent
    cmd, _ = listener.requests[0]
    assert not cmd.is_address_only and cmd.body is True and listener.rendezvous_requests == 0
    assert "sb-hc-action=request" in cmd.address and f"sb-hc-id={cmd.id}" in cmd.address
    assert status2 == 200
    folded = {k.lower(): v for k, v in listener.requests[1][0].request_headers.items()}
    assert folded["x-rep"] == "a, b"


async def test_authorization_header_is_consumed_when_it_is_the_token(emulator):
    token = sas_token(emulator, "orders")
    async with TestListener(emulator, "orders", token) as listener:
        status, *_ = await _post(emulator, "/orders", method="GET", headers={"Authorization": token})
    assert status == 200
    cmd, body = listener.requests[0]
    assert cmd.method == "GET" and cmd.body is False and body is None
    assert "authorization" not in {k.lower() for k in cmd.request_headers}


@pytest.mark.parametrize("size", [100 * 1024, 1024 * 1024])
async def test_large_request_goes_through_rendezvous(emulator, size):
    token = sas_token(emulator, "orders")
    payload = os.urandom(size)
    async with TestListener(emulator, "orders", token) as listener:
        status, reason, headers, body = await _post(emulator, "/orders/big?q=1", payload, token=token)
    assert status == 200 and body == payload and reason == "Custom Reason"
    assert listener.rendezvous_requests == 1
    cmd, got = listener.requests[0]
    assert cmd.method == "POST" and cmd.request_target == "/orders/big?q=1" and got == payload


async def test_chunked_request_goes_through_rendezvous(emulator):
    token = sas_token(emulator, "orders")

    async def chunks():
        for i in range(3):
            yield f"chunk{i};".encode()

    async with TestListener(emulator, "orders", token) as listener:
        status, _, _, body = await _post(emulator, "/orders", chunks(), token=token)
    assert status == 200 and body == b"chunk0;chunk1;chunk2;"
    assert listener.rendezvous_requests == 1


@pytest.mark.parametrize("size", [200 * 1024, 1024 * 1024])
async def test_large_response(emulator, size):
    token = sas_token(emulator, "orders")
    payload = os.urandom(size)

    async def big(cmd, body):
        return 201, {"Content-Type": "application/octet-stream"}, payload

    async with TestListener(emulator, "orders", token, on_request=big):
        status, reason, headers, body = await _post(emulator, "/orders", b"q", token=token)
    assert status == 201 and body == payload and headers["Via"]


async def test_big_response_on_control_channel_refused(emulator):
    """Strict: a response body over 64 KiB on the control channel is refused: the sender gets 502 and
    the control channel is closed with 1009 (responses that big must use a rendezvous)."""
    token = sas_token(emulator, "orders")
    payload = os.urandom(64 * 1024 + 1)
    async with TestListener(emulator, "orders", token) as listener:
        async def answer(cmd, body):
            await listener.send(p.encode_command(p.ResponseCommand(cmd.id, 200, "OK", {}, True)), payload)
        listener._serve = answer  # answer straight on the control channel
        status, _, headers, _ = await _post(emulator, "/orders/big", b"", token=token)
        assert status == 502 and "Via" not in headers
        code, _reason = await asyncio.wait_for(listener.closed, 5)
        assert code == 1009


async def test_big_response_on_control_channel_and_stray_empty_body(lenient_emulator):
    """Lenient profile: > 64 KiB accepted on the control channel; an empty body after body:false is
    ignored in both profiles (hyco-https sends one)."""
    emulator = lenient_emulator
    token = sas_token(emulator, "orders")
    payload = os.urandom(100 * 1024)

    async def custom(cmd, body):
        return 0, {}, b""

    async with TestListener(emulator, "orders", token, on_request=custom) as listener:
        async def answer(cmd, body):
            if cmd.request_target.endswith("empty"):
                await listener.send(p.encode_command(p.ResponseCommand(cmd.id, 204, "No Content", {}, False)), b"")
            else:
                await listener.send(p.encode_command(p.ResponseCommand(cmd.id, 200, "OK", {}, True)), payload)
        listener._serve = answer  # answer straight on the control channel
        status, _, _, body = await _post(emulator, "/orders/empty", b"", token=token)
        assert status == 204 and body == b""
        status, _, _, body = await _post(emulator, "/orders/big", b"", token=token)
        assert status == 200 and body == payload


async def test_no_listener_502_and_timeout_504(fast_emulator):
    emu = fast_emulator
    token = sas_token(emu, "orders")
    status, reason, headers, _ = await _post(emu, "/orders", b"x", token=token)
    assert status == 502 and reason.startswith(p.MSG_NO_LISTENERS) and "Via" not in headers

    async def slow(cmd, body):
        await asyncio.sleep(5)
        return 200, {}, b""

    async with TestListener(emu, "orders", token, on_request=slow):
        status, reason, _, _ = await _post(emu, "/orders", b"x", token=token)
        assert status == 504 and reason.startswith(p.MSG_RESPONSE_TIMEOUT)
        status, *_ = await _post(emu, "/orders", b"x", token=token, headers={p.HEADER_ALLOWED_LISTENERS: "other"})
        assert status == 404


async def test_listener_status_and_via_pass_through(emulator):
    token = sas_token(emulator, "orders")

    async def answer(cmd, body):
        return 502, {"Via": "1.1 upstream", "X-Custom": "yes", "Transfer-Encoding": "chunked"}, b"bad gateway from app"

    async with TestListener(emulator, "orders", token, on_request=answer):
        status, reason, headers, body = await _post(emulator, "/orders", method="DELETE", token=token)
    assert status == 502 and reason == "Custom Reason" and body == b"bad gateway from app"
    assert headers["Via"] == f"1.1 upstream, 1.1 {emulator.host}" and headers["X-Custom"] == "yes"


async def test_runtime_information_get(emulator):
    token = sas_token(emulator, "orders")
    async with TestListener(emulator, "orders", token):
        status, _, headers, body = await _post(
            emulator, "/orders?api-version=2016-07", method="GET",
            headers={"X-PROCESS-AT": "ServiceBus", "Authorization": token},
        )
    assert status == 200 and "entry" in headers["Content-Type"]
    assert b"<ListenerCount>1</ListenerCount>" in body
    assert b"<RequiresClientAuthorization>true</RequiresClientAuthorization>" in body
    status, _, headers, _ = await _post(emulator, "/nothing?api-version=2016-07", method="GET",
                                        headers={"X-PROCESS-AT": "ServiceBus", "Authorization": token})
    assert "type=feed" in headers["Content-Type"]


async def test_listener_drop_fails_request_at_once(emulator):
    token = sas_token(emulator, "orders")
    async with TestListener(emulator, "orders", token) as listener:
        async def vanish(cmd, body):
            await listener.ws.close()
        listener._serve = vanish
        started = asyncio.get_running_loop().time()
        status, reason, _, _ = await _post(emulator, "/orders", b"x", token=token)
    assert status == 502 and "disconnected" in reason
    assert asyncio.get_running_loop().time() - started < 5
