"""HTTP senders and listeners through the emulator: this library on both ends."""

import asyncio
import hashlib

import pytest
from azure.core.credentials import AzureNamedKeyCredential

from relay import (
    AuthorizationFailedError,
    EndpointNotFoundError,
    ForbiddenError,
    NoListenerError,
    RelayedHttpResponse,
    RelayTimeoutError,
)
from tests.fixtures.emulator import TEST_CONFIG, start_emulator

from .conftest import make_client, make_listener

MB = 1024 * 1024


def pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(256)) * (n // 256) + bytes(i % 251 for i in range(n % 256))


async def echo_handler(request):
    return RelayedHttpResponse(
        200,
        {"X-Method": request.method, "X-Path": request.path, "X-Query": request.query, "X-Target": request.target,
         "X-Custom": request.headers.get("x-custom", ""), "X-Length": str(len((await request.read())))},
        (await request.read()),
    )


async def test_request_round_trip(emulator, client):
    async with make_listener(emulator, request_handler=echo_handler):
        resp = await client.request("PUT", "/a/b?x=1&sb-hc-token=zzz", body="héllo", headers={"X-Custom": "v1"})
        async with resp:
            assert resp.status == 200 and resp.reason == "OK"
            assert resp.headers["x-method"] == "PUT"
            assert resp.headers["X-Path"] == "/a/b"
            assert resp.headers["X-Query"] == "x=1"  # sb-hc-* removed by the service
            assert resp.headers["X-Target"] == "/orders/a/b?x=1"
            assert resp.headers["X-Custom"] == "v1"
            assert "Via" in resp.headers and resp.from_listener
            assert await resp.text() == "héllo"


async def test_listener_errors_are_returned_not_raised(emulator, client):
    async def handler(request):
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        return RelayedHttpResponse(404, {"Content-Type": "application/json"}, '{"error":"no such order"}', reason="Order Missing")

    async with make_listener(emulator, request_handler=handler):
        resp = await client.request("GET", "/orders/42")
        assert (resp.status, resp.reason) == (404, "Order Missing")
        assert await resp.json() == {"error": "no such order"}
        resp = await client.request("GET", "/boom")
        assert resp.status == 500 and "RequestHandler threw an exception" in await resp.text()
    async with make_listener(emulator):  # no request handler: 501, like .NET
        resp = await client.request("GET", "/")
        assert resp.status == 501 and "not been configured" in await resp.text()


async def test_sync_handler_and_empty_bodies(emulator, client):
    async with make_listener(emulator, request_handler=lambda req: RelayedHttpResponse(204)):
        resp = await client.request("DELETE", "/x")
        assert resp.status == 204 and await resp.read() == b""


async def test_one_megabyte_both_ways(emulator, client):
    """1 MB request (address-only, read over a rendezvous) and 1 MB response (sent over a rendezvous)."""
    body = pattern(MB)
    async with make_listener(emulator, request_handler=echo_handler):
        resp = await client.request("POST", "/big", body=body)
        assert resp.status == 200 and resp.headers["X-Length"] == str(MB)
        assert hashlib.sha256(await resp.read()).digest() == hashlib.sha256(body).digest()


async def test_streamed_bodies(emulator, client):
    async def chunks():
        for i in range(8):
            yield bytes([i]) * 100_000
            await asyncio.sleep(0)

    async def handler(request):
        async def gen():
            for part in ((await request.read())[:300_000], (await request.read())[300_000:]):
                yield part
        return RelayedHttpResponse(200, {"Content-Type": "application/octet-stream"}, gen())

    async with make_listener(emulator, request_handler=handler):
        async with await client.request("POST", "/stream", body=chunks()) as resp:
            got = b"".join([c async for c in resp.iter_chunks(65536)])
        assert got == b"".join(bytes([i]) * 100_000 for i in range(8))


async def test_thousand_concurrent_requests(emulator):
    async def handler(request):
        return RelayedHttpResponse(200, body=(await request.read()))

    async with make_listener(emulator, request_handler=handler), make_client(emulator, max_connections=50) as client:
        async def one(i):
            resp = await client.request("POST", f"/n/{i}", body=b"%d" % i)
            return await resp.read()

        results = await asyncio.gather(*(one(i) for i in range(1000)))
        assert results == [b"%d" % i for i in range(1000)]


async def test_allowed_listeners(emulator, client):
    def tagged(tag):
        return lambda request: RelayedHttpResponse(200, body=tag)

    async with make_listener(emulator, "echo", request_handler=tagged("one")) as one, \
            make_listener(emulator, "echo", request_handler=tagged("two")) as two, \
            make_client(emulator, "echo") as echo_client:
        for _ in range(5):
            resp = await echo_client.request("GET", "/", allowed_listeners=[two.listener_id])
            assert await resp.read() == b"two"
            resp = await echo_client.request("GET", "/", disallowed_listeners=two.listener_id)
            assert await resp.read() == b"one"
        with pytest.raises(NoListenerError, match="AllowedListeners"):
            await echo_client.request("GET", "/", allowed_listeners=["00000000-0000-0000-0000-000000000000"])
        assert one.is_online


async def test_typed_service_errors(emulator):
    # 401: wrong key; the message names the likely cause and never the token.
    bad = AzureNamedKeyCredential("RootManageSharedAccessKey", "wrong-key")
    async with make_client(emulator, credential=bad) as c:
        with pytest.raises(AuthorizationFailedError) as info:
            await c.request("GET", "/")
        assert "SAS key name or key is wrong" in str(info.value) and "sig=" not in str(info.value)
        assert info.value.status == 401 and not info.value.is_transient
        with pytest.raises(AuthorizationFailedError, match="InvalidSignature"):
            await c.connect()
    # 403: a listen-only rule cannot send.
    listen_only = AzureNamedKeyCredential("listen-orders", emulator.sas_key("listen-orders"))
    async with make_client(emulator, credential=listen_only) as c:
        with pytest.raises(ForbiddenError, match="lacks the 'Send' right"):
            await c.request("GET", "/")
    # 404: no such hybrid connection.
    async with make_client(emulator, "does-not-exist") as c:
        with pytest.raises(EndpointNotFoundError, match="check the hybrid connection name"):
            await c.request("GET", "/")
    # 502: nobody listening on "inbound".
    async with make_client(emulator, "inbound") as c:
        with pytest.raises(NoListenerError) as info:
            await c.request("GET", "/")
        assert info.value.is_transient and "TrackingId" in str(info.value)


async def test_gateway_timeout_is_typed():
    config = {**TEST_CONFIG, "responseTimeoutSeconds": 1}
    async with start_emulator(config, tls=False) as emu:
        async def slow(request):
            await asyncio.sleep(3)
            return RelayedHttpResponse(200)

        async with make_listener(emu, request_handler=slow, close_timeout=0.1), make_client(emu) as c:
            with pytest.raises(RelayTimeoutError) as info:
                await c.request("GET", "/slow")
            assert info.value.status == 504


async def test_inline_up_to_64k_rendezvous_beyond(emulator, client, monkeypatch):
    """Responses of at most 64 KiB go back on the control channel; one byte more opens a rendezvous."""
    from relay._http_serving import HttpServing

    contexts = []
    real_open = HttpServing._open

    async def spy(self, command):
        contexts.append("response rendezvous" if not command.is_address_only else "request rendezvous")
        return await real_open(self, command)

    monkeypatch.setattr(HttpServing, "_open", spy)

    async def sized(request):
        return RelayedHttpResponse(200, body=pattern(int(request.query_params["n"])))

    async with make_listener(emulator, request_handler=sized):
        for size, rendezvous in ((0, 0), (65536, 0), (65537, 1)):
            contexts.clear()
            resp = await client.request("GET", f"/?n={size}")
            assert await resp.read() == pattern(size)
            assert contexts.count("response rendezvous") == rendezvous, (size, contexts)


async def test_slow_handler_answers_503_before_the_service_deadline(emulator, client):
    """503, not 504: 502 and 504 are the service's own codes (a 504 would look like the service's timeout)."""
    async def slow(request):
        await asyncio.sleep(5)

    async with make_listener(emulator, request_handler=slow, handler_timeout=0.3, close_timeout=0.1):
        resp = await client.request("GET", "/slow")
        assert resp.status == 503 and resp.from_listener
        assert "did not answer in time" in await resp.text()


async def test_sender_that_disconnects_mid_body(emulator, client):
    """A sender that goes away halfway through its body: the handler never sees it, the listener carries on."""
    from relay import get_token_provider

    from .conftest import root_key

    calls = []

    async def handler(request):
        calls.append(len((await request.read())))
        return RelayedHttpResponse(200, body=b"ok")

    async with make_listener(emulator, request_handler=handler) as listener:
        token = (await get_token_provider(root_key(emulator)).get_token(emulator.address("orders"))).token
        for length in (1000, 200_000):  # inline-sized and rendezvous-sized announcements
            reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port, ssl=emulator.ssl_context())
            writer.write(f"POST /orders/cut HTTP/1.1\r\nHost: 127.0.0.1:{emulator.port}\r\nServiceBusAuthorization: {token}\r\n"
                         f"Content-Length: {length}\r\n\r\n".encode() + b"x" * 500)
            await writer.drain()
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        await asyncio.sleep(0.2)
        resp = await client.request("POST", "/after", body=b"whole")
        assert resp.status == 200 and await resp.read() == b"ok"
        assert calls == [5] and listener.is_online


async def test_handler_returning_nonsense_answers_500(emulator, client):
    def handler(request):
        if request.path == "/status":
            return RelayedHttpResponse(42)  # would break the control channel if it went out
        if request.path == "/header":
            return RelayedHttpResponse(200, {"X-A": "a\r\nX-Injected: 1"})
        return "not a response"

    async with make_listener(emulator, request_handler=handler) as listener:
        for path in ("/status", "/type"):
            resp = await client.request("GET", path, timeout=5)
            assert resp.status == 500 and "RequestHandler threw an exception" in await resp.text()
        resp = await client.request("GET", "/header", timeout=5)
        assert resp.status == 200 and resp.headers["X-A"] == "a  X-Injected: 1" and "X-Injected" not in resp.headers
        assert listener.is_online


async def test_close_ends_an_idle_pinned_rendezvous_instead_of_waiting_it_out(emulator, client):
    """A rendezvous the service pinned to the sender's connection is idle after the exchange;
    close() must end its serving loop, not wait for close_timeout (which used to be the 10 s default).
    With close_timeout at an hour, a hang shows as this test's timeout."""
    listener = make_listener(emulator, request_handler=echo_handler, close_timeout=3600)
    await listener.open()
    resp = await client.request("POST", "/big", body=pattern(MB))  # address-only: served over a rendezvous
    assert resp.status == 200 and len(await resp.read()) == MB
    await asyncio.wait_for(listener.close(), 30)
    assert all(task.done() for task in listener._tasks)
