"""Request bodies that stream to the listener's handler while the sender is still sending.

Requests the emulator routes over a rendezvous (chunked, unknown length or over 64 KiB) reach
the listener as the JSON followed by one fragmented binary message; the handler starts on the
JSON and reads the body with ``request.iter_chunks()`` as it arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import aiohttp
import pytest

from relay import ConnectionLostError, HybridConnectionClient, RelayedHttpResponse
from relay import protocol as p
from relay.sas import generate_sas_token, sas_resource_uri

from .conftest import ROOT_RULE, make_listener, root_key

MB = 1024 * 1024


def _token(emu, entity: str = "orders") -> str:
    return generate_sas_token(sas_resource_uri(emu.address(entity)), ROOT_RULE, emu.sas_key(ROOT_RULE))


async def test_request_body_is_consumed_while_the_sender_still_sends(emulator):
    """Part 2 is only sent once the handler has seen part 1: without streaming this would hang."""
    loop = asyncio.get_running_loop()
    first_seen = asyncio.Event()
    times: dict[str, float] = {}

    async def handler(request):
        times["handler_started"] = loop.time()
        parts = []
        async for chunk in request.iter_chunks():
            if not parts:
                times["first_chunk"] = loop.time()
                first_seen.set()
            parts.append(chunk)
        return RelayedHttpResponse(200, {"X-Chunks": str(len(parts))}, b"".join(parts))

    async def body():
        yield b"a" * 1000
        await asyncio.wait_for(first_seen.wait(), 10)  # the listener has part 1 before part 2 exists
        times["part2_sent"] = loop.time()
        yield b"b" * 2000

    async with make_listener(emulator, request_handler=handler, stream_request_body=True):
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{emulator.http}/orders/upload", data=body(), ssl=emulator.ssl_context() or False,
                                    headers={p.HEADER_TOKEN: _token(emulator)}) as resp:
                assert resp.status == 200
                assert await resp.read() == b"a" * 1000 + b"b" * 2000
                assert int(resp.headers["X-Chunks"]) >= 2
    assert times["handler_started"] <= times["first_chunk"] < times["part2_sent"]


async def test_one_megabyte_body_via_iter_chunks(emulator, client):
    data = bytes(i % 251 for i in range(MB))
    seen: dict[str, object] = {}

    async def handler(request):
        with pytest.raises(RuntimeError):
            request.body  # still streaming: only valid after read()
        digest, total, count = hashlib.sha256(), 0, 0
        async for chunk in request.stream:
            digest.update(chunk)
            total += len(chunk)
            count += 1
        seen["count"] = count
        return RelayedHttpResponse(200, {"X-Length": str(total)}, digest.hexdigest())

    async with make_listener(emulator, request_handler=handler, stream_request_body=True):
        resp = await client.request("POST", "/big", body=data)
        async with resp:
            assert resp.status == 200 and resp.headers["X-Length"] == str(MB)
            assert await resp.text() == hashlib.sha256(data).hexdigest()
    assert seen["count"] >= 2  # it came in pieces


async def test_read_and_unread_bodies_over_a_rendezvous(emulator, client):
    data = b"x" * 300_000

    async def handler(request):
        if request.path == "/ignore":
            return RelayedHttpResponse(201, body="ignored")  # never reads the body: the listener discards it
        body = await request.read()
        assert request.body == body and await request.read() == body
        return RelayedHttpResponse(200, body=str(len(body)))

    async with make_listener(emulator, request_handler=handler, stream_request_body=True):
        for _ in range(2):
            resp = await client.request("POST", "/ignore", body=data)
            async with resp:
                assert resp.status == 201 and await resp.text() == "ignored"
            resp = await client.request("POST", "/read", body=data)
            async with resp:
                assert resp.status == 200 and await resp.text() == "300000"


async def test_sender_disconnect_mid_body_raises_connection_lost(emulator, client):
    first_seen = asyncio.Event()
    outcome: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handler(request):
        if request.path == "/ok":
            return RelayedHttpResponse(200, body=b"fine")
        received = 0
        try:
            async for chunk in request.iter_chunks():
                received += len(chunk)
                first_seen.set()
        except ConnectionLostError as exc:
            outcome.set_result((exc, received))
            raise
        outcome.set_result((None, received))
        return RelayedHttpResponse(200)

    async with make_listener(emulator, request_handler=handler, stream_request_body=True) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port, ssl=emulator.ssl_context())
        head = (f"POST /orders/cut HTTP/1.1\r\nHost: {emulator.host}\r\nContent-Length: {200 * 1024}\r\n"
                f"{p.HEADER_TOKEN}: {_token(emulator)}\r\n\r\n").encode()
        writer.write(head + b"z" * 5000)
        await writer.drain()
        await asyncio.wait_for(first_seen.wait(), 10)
        writer.transport.abort()  # the sender dies mid-body
        exc, received = await asyncio.wait_for(outcome, 10)
        assert isinstance(exc, ConnectionLostError) and 0 < received < 200 * 1024
        # The listener is unharmed.
        assert listener.is_online
        resp = await client.request("GET", "/ok")
        async with resp:
            assert resp.status == 200 and await resp.read() == b"fine"


async def test_by_default_the_handler_sees_the_whole_body(emulator):
    """Without ``stream_request_body`` a large (rendezvous) request reaches the handler complete."""
    payload = os.urandom(300 * 1024)

    async def handler(request):
        return RelayedHttpResponse(200, body=hashlib.sha256(request.body).hexdigest())

    async with make_listener(emulator, request_handler=handler):
        async with HybridConnectionClient(emulator.address("orders"), root_key(emulator),
                                          connection_verify=emulator.ca_cert) as client:
            response = await client.request("POST", "/whole", body=payload)
            assert response.status == 200 and await response.text() == hashlib.sha256(payload).hexdigest()
