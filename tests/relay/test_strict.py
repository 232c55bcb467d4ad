"""The library against the strict emulator (issue 9): what Azure enforces and the old code got wrong.

Every test here runs against the real emulator subprocess with the strict profile (the default).
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from relay import ConnectionLostError, RejectedError, RelayedHttpResponse
from relay import protocol as p
from tests.emulator.drivers import LogWatch, sas_token, ws_connect
from tests.fixtures.emulator import TEST_CONFIG, start_emulator

from .conftest import make_client, make_listener


async def ok(request):
    return RelayedHttpResponse(200, body=b"ok")


# -- keep-alive and dead control channels ------------------------------------------------------------


async def test_pong_keepalive_keeps_an_idle_control_channel_open():
    """Strict: idle control channels are dropped (idleTimeoutSeconds) and PINGs close them; the
    listener's unsolicited PONGs keep it open without reconnecting."""
    async with start_emulator({**TEST_CONFIG, "idleTimeoutSeconds": 0.6}, tls=False) as emu:
        events: list[str] = []
        async with make_listener(emu, request_handler=ok, keepalive_interval=0.15,
                                 on_connecting=lambda: events.append("connecting")) as listener, make_client(emu) as client:
            await asyncio.sleep(2.0)  # more than three idle timeouts
            assert listener.is_online and listener.last_error is None
            assert events == ["connecting"]  # never reconnected
            assert (await client.request("GET", "/")).status == 200
        log = emu.log_path.read_text()
        assert "sent a PING" not in log and "idle" not in log


class FreezingProxy:
    """A TCP proxy to the emulator that can stop forwarding (a dead connection that never errors)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.frozen = False
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        for w in self._writers:
            w.close()

    async def _handle(self, reader, writer):
        self.connections += 1
        frozen_here = self.frozen
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [writer, up_writer]

        async def copy(src, dst):
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if self.frozen and not frozen_here:
                        continue  # swallow: the connection looks alive but carries nothing
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


async def test_receive_deadline_detects_a_dead_control_channel_and_reconnects(caplog):
    async with start_emulator({**TEST_CONFIG, "idleTimeoutSeconds": None}, tls=False) as emu:
        async with FreezingProxy(emu.port) as proxy:
            address = f"sb://127.0.0.1:{proxy.port}/orders"
            from relay import HybridConnectionListener

            from .conftest import root_key

            online = asyncio.Event()
            listener = HybridConnectionListener(address, root_key(emu), use_tls=False, request_handler=ok,
                                                keepalive_interval=0.1, receive_timeout=0.5, on_online=online.set)
            async with listener:
                online.clear()
                proxy.frozen = True  # the first connection goes silent both ways
                await asyncio.wait_for(online.wait(), 10)  # reconnected over a fresh connection
                assert proxy.connections == 2 and "nothing arrived on the control channel" in caplog.text


# -- rendezvous: serve later requests, byte-for-byte URLs, optional address/id ------------------------


async def test_request_rendezvous_serves_later_requests_of_the_sender_connection(emulator):
    """A large request opens a rendezvous; the sender's later requests arrive over it (no address in
    them) and are answered there. Closing it after one exchange would drop the sender's connection."""
    seen: list[str] = []

    async def handler(request):
        seen.append(request.path)
        return RelayedHttpResponse(200, body=f"{request.method} {request.path} {len(await request.read())}")

    watch = LogWatch(emulator)
    async with make_listener(emulator, request_handler=handler), make_client(emulator, max_connections=1) as client:
        results = []
        for method, path, body in (("POST", "/big", b"x" * 100_000), ("POST", "/two", b"y"), ("POST", "/three", None)):
            resp = await client.request(method, path, body=body)
            results.append((resp.status, await resp.text()))
    assert results == [(200, "POST /big 100000"), (200, "POST /two 1"), (200, "POST /three 0")]
    assert "dropping the sender's connection" not in watch.text()


async def test_response_rendezvous_serves_later_requests(emulator):
    """A response over 64 KiB opens a response rendezvous; it stays open for the connection's next requests."""
    async def handler(request):
        size = int(request.query_params.get("n", "2"))
        return RelayedHttpResponse(200, body=b"r" * size)

    async with make_listener(emulator, request_handler=handler), make_client(emulator, max_connections=1) as client:
        for size in (70_000, 10, 80_000, 3):
            resp = await client.request("POST", f"/?n={size}", body=b"b")
            assert resp.status == 200 and await resp.read() == b"r" * size


async def test_websocket_accept_uses_the_address_byte_for_byte(emulator, client):
    """The accept address carries %2f (gateway-style); re-quoting it (yarl: %2F) gets 403."""
    async with make_listener(emulator) as listener:
        async with await client.connect() as stream:
            server_side = await asyncio.wait_for(listener.accept(), 5)
            await stream.send("hi")
            assert await server_side.receive() == "hi"
            await server_side.close()


def test_rendezvous_request_without_address_or_id_parses():
    full = p.decode_command('{"request":{"requestTarget":"/hc/x","method":"GET","requestHeaders":{},"body":false}}')
    assert isinstance(full, p.RequestCommand) and full.address is None and full.id is None and full.method == "GET"
    with pytest.raises(p.ProtocolError):
        p.decode_command('{"request":{"id":"1"}}')  # address-only needs its address


# -- the retry rule ------------------------------------------------------------------------------------


class DroppingListener:
    """Raw listener: fetches address-only requests over a rendezvous and answers; a request arriving
    later over that rendezvous is not answered: the rendezvous is closed (the service then drops the
    sender's connection). Inline requests are answered on the control channel."""

    def __init__(self, emu):
        self.emu = emu
        self.inline = 0

    async def __aenter__(self):
        self.ws = await ws_connect(self.emu, p.hc_url(self.emu.relay, "orders", "listen"), sas_token(self.emu, "orders"))
        self.task = asyncio.create_task(self._pump())
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await self.ws.close()

    async def _pump(self):
        reader = p.CommandReader()
        tasks = set()
        async for message in self.ws:
            item = reader.feed(message)
            if item is None:
                continue
            command, _body = item
            if isinstance(command, p.RequestCommand) and command.is_address_only:
                task = asyncio.create_task(self._rendezvous(command))
                tasks.add(task)
            elif isinstance(command, p.RequestCommand):
                self.inline += 1
                await self.ws.send(p.encode_command(p.ResponseCommand(command.id, 200, "OK", {}, True)))
                await self.ws.send(b"inline")

    async def _rendezvous(self, command):
        async with ws_connect(self.emu, command.address) as rdv:
            reader = p.CommandReader()
            first = True
            async for message in rdv:
                item = reader.feed(message)
                if item is None:
                    continue
                full, _ = item
                if not first:
                    await rdv.close()
                    return
                first = False
                await rdv.send(p.encode_command(p.ResponseCommand(full.id or command.id, 200, "OK", {}, True)))
                await rdv.send(b"rendezvous")


@pytest.mark.parametrize("method, retried", [("GET", True), ("PUT", True), ("POST", False)])
async def test_request_dropped_before_any_response_byte(emulator, method, retried):
    """The pooled connection is dropped mid-request: idempotent methods are retried once (and served
    on a new connection), others raise ConnectionLostError (the listener may have run them)."""
    async with DroppingListener(emulator) as listener, make_client(emulator, max_connections=1) as client:
        resp = await client.request("POST", "/big", body=b"x" * 70_000)
        assert await resp.read() == b"rendezvous"
        if retried:
            resp = await client.request(method, "/again")
            assert resp.status == 200 and await resp.read() == b"inline" and listener.inline == 1
        else:
            with pytest.raises(ConnectionLostError):
                await client.request(method, "/again", body=b"once")


# -- service errors, half-close, app query -------------------------------------------------------------


async def test_listener_reject_with_a_tracking_id_is_a_rejection(emulator, client):
    """A .NET listener's reject text carries a TrackingId; only SystemTracker marks the service's errors."""
    def refuse(ctx):
        ctx.status_code = 502
        ctx.status_description = "The Listener's custom AcceptHandler threw an exception. TrackingId:abc_G1"
        return False

    async with make_listener(emulator, accept_handler=refuse):
        with pytest.raises(RejectedError) as info:
            await client.connect()
    assert info.value.status == 502


async def test_address_query_is_kept_ahead_of_sb_hc_parameters(emulator):
    """``sb://ns/hc?x=1``: the app query reaches the listener (accept URL) ahead of the path's query."""
    async with make_listener(emulator) as listener:
        address = emulator.address("orders") + "?tenant=a%2Fb"
        from relay import HybridConnectionClient

        from .conftest import root_key

        async with HybridConnectionClient(address, root_key(emulator), connection_verify=emulator.ca_cert) as client:
            async with await client.connect(path="/room?y=2"):
                server_side = await asyncio.wait_for(listener.accept(), 5)
                assert server_side.url == f"sb://{emulator.host}/orders/room?tenant=a%2Fb&y=2"
                await server_side.close()


async def test_node_style_raw_sender_half_close_keeps_our_send_side(emulator):
    """The sender shuts down (.NET: close 1000 "Shutdown"); the service tells the listener 1001 with its
    own reason. Our listener side still sends until it closes."""
    async with make_listener(emulator) as listener:
        token = sas_token(emulator, "orders")
        async with ws_connect(emulator, p.hc_url(emulator.relay, "orders", "connect"), token) as ws:
            server_side = await asyncio.wait_for(listener.accept(), 5)
            ws.protocol.send_close(1000, "Shutdown")
            ws.send_data()
            assert await server_side.receive() is None and server_side.close_code == 1001
            await server_side.send("still flowing")
            assert await ws.recv() == "still flowing"
            await server_side.close()


async def test_aiohttp_sender_sees_the_listener_close_as_1000(emulator):
    async with make_listener(emulator) as listener:
        token = sas_token(emulator, "orders")
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(p.hc_url(emulator.relay, "orders", "connect"), headers={p.HEADER_TOKEN: token},
                                          ssl=emulator.ssl_context()) as ws:
                server_side = await asyncio.wait_for(listener.accept(), 5)
                await server_side.close(4000, "app code")
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1011  # the service's own code
