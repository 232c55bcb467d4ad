"""relay.forward in process: large and unknown-length responses stream, limits, status mapping, no token leaks."""

from __future__ import annotations

import asyncio
import contextlib

from azure.core.credentials import AzureNamedKeyCredential

from relay import HybridConnectionClient, HybridConnectionListener, RejectedError
from relay.forward import ForwardObserver, ForwardTarget, Forwarder

from .conftest import ROOT_RULE, local_service


class Counting(ForwardObserver):
    def __init__(self):
        self.done: list[tuple[int, int, int]] = []

    def request_done(self, request_id, method, status, bytes_in, bytes_out, seconds):
        self.done.append((status, bytes_in, bytes_out))


@contextlib.asynccontextmanager
async def forwarding(emu, target: ForwardTarget, entity: str = "orders"):
    observer = Counting()
    fwd = Forwarder(target, entity, observer=observer)
    await fwd.start()
    key = AzureNamedKeyCredential(ROOT_RULE, emu.sas_key(ROOT_RULE))
    listener = HybridConnectionListener(emu.address(entity), key, connection_verify=emu.ca_cert,
                                        request_handler=fwd.handle, accept_handler=fwd.accept)
    try:
        async with listener:
            async def accept():
                async for stream in listener:
                    fwd.spawn_pipe(stream)
            acceptor = asyncio.ensure_future(accept())
            async with HybridConnectionClient(emu.address(entity), key, connection_verify=emu.ca_cert) as client:
                yield client, observer, fwd
            acceptor.cancel()
    finally:
        await fwd.stop()


async def test_large_and_chunked_responses_stream_through(emulator):
    async with local_service("svc") as svc:
        async with forwarding(emulator, ForwardTarget.build(svc.url)) as (client, observer, _fwd):
            for raw, size in (("/big/1000", 1000), ("/big/3000000", 3_000_000), ("/big/200000?chunked=1", 200_000)):
                resp = await client.request("GET", raw)
                body = await resp.read()
                assert resp.status == 200 and len(body) == size
                assert body == bytes(i % 251 for i in range(size))
            async with asyncio.timeout(10):
                while len(observer.done) < 3:  # streamed responses are counted when their last chunk has gone
                    await asyncio.sleep(0.05)
            assert sorted(o[2] for o in observer.done) == [1000, 200_000, 3_000_000]


async def test_concurrency_limit_answers_503_with_retry_after(emulator):
    async with local_service("svc") as svc:
        target = ForwardTarget.build(svc.url, max_concurrency=1)
        async with forwarding(emulator, target) as (client, observer, fwd):
            first = asyncio.ensure_future(client.request("GET", "/slow"))
            while "/slow" not in svc.seen:
                await asyncio.sleep(0.05)
            resp = await client.request("GET", "/x")
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            svc.hold.set()
            assert (await first).status == 200
            assert (await client.request("GET", "/x")).status == 200


async def test_unreachable_local_service_gives_502_for_http_and_websocket(emulator):
    async with local_service("gone") as svc:
        url = svc.url
    async with forwarding(emulator, ForwardTarget.build(url, connect_timeout=5)) as (client, _observer, _fwd):
        resp = await client.request("GET", "/x")
        assert resp.status == 502 and "did not answer" in await resp.text()
        try:
            await client.connect(path="/ws")
            raise AssertionError("a WebSocket was accepted with the local service down")
        except RejectedError as exc:  # rejected at the handshake, with the reason
            assert exc.status == 502 and "local service unavailable" in exc.description


async def test_websocket_subprotocol_is_the_one_the_local_service_picked(emulator):
    async with local_service("svc") as svc:
        async with forwarding(emulator, ForwardTarget.build(svc.url)) as (client, _observer, _fwd):
            async with await client.connect(path="/chat", subprotocols=["v9", "v2"]) as stream:
                assert stream.subprotocol == "v2"
                await stream.send("hi")
                assert await stream.receive() == "svc:/chat:hi"
