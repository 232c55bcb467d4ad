"""WebSocket senders: rendezvous, relaying, close/half-close, subprotocols, rejects, routing, quota."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest
import websockets
from yarl import URL

from relay import protocol as p
from tests.emulator.drivers import TestListener, handshake_status, hc, sas_token, ws_connect


async def test_round_trip_keeps_types_and_boundaries(emulator):
    token = sas_token(emulator, "echo")
    async with TestListener(emulator, "echo", token):
        async with ws_connect(emulator, hc(emulator, "echo", "connect"), token) as ws:
            for message in ("text", b"\x00\x01binary", "", b"", "é" * 1000):
                await ws.send(message)
            received = [await ws.recv() for _ in range(5)]
            assert received == ["text", b"\x00\x01binary", "", b"", "é" * 1000]
            big = bytes(range(256)) * 4096  # 1 MiB in one message
            await ws.send(big)
            assert await ws.recv() == big
            await ws.ping()


async def test_connect_headers_query_suffix_and_no_extensions(emulator):
    seen: list[p.AcceptCommand] = []

    async def record(cmd, listener):
        seen.append(cmd)
        await TestListener.echo_accept(cmd, listener)

    token = sas_token(emulator, "echo")
    async with TestListener(emulator, "echo", token, on_accept=record):
        url = hc(emulator, "echo", "connect", id="sender-42", suffix="/sub/path", app_query="app=1&x=%20y")
        # websockets offers permessage-deflate by default: the emulator must decline it.
        async with websockets.connect(url, ssl=emulator.ssl_context(), proxy=None,
                                      additional_headers={p.HEADER_TOKEN: token, "X-App": "v"},
                                      subprotocols=["p1", "p2"]) as ws:
            assert ws.subprotocol == "p1"
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            await ws.send("hi")
            assert await ws.recv() == "hi"
    cmd = seen[0]
    headers = {k.lower(): v for k, v in cmd.connect_headers.items()}
    assert headers["host"] == emulator.host
    assert headers["sec-websocket-key"] and headers["sec-websocket-version"] == "13"
    assert headers["x-app"] == "v" and headers["sec-websocket-protocol"] == "p1, p2"
    assert "servicebusauthorization" not in headers
    assert cmd.id == "sender-42"
    assert "/$hc/echo/sub/path?app=1&x=%20y&sb-hc-action=accept&sb-hc-id=sender-42&" in cmd.address
    assert cmd.remote_endpoint is not None and cmd.remote_endpoint.address == "127.0.0.1"


@pytest.mark.parametrize("profile", ["strict", "lenient"])
async def test_close_codes_and_half_close(emulator, lenient_emulator, profile):
    """Half-close both ways. Strict: each side sees the service's own close frame (1011 for a
    non-clean code); lenient: the peer's code and reason are forwarded."""
    # Both fixtures are requested up front: a session-scoped async fixture cannot be created
    # from inside a running test (request.getfixturevalue would need the loop that runs it).
    emulator = emulator if profile == "strict" else lenient_emulator
    events: list = []
    done = asyncio.Event()

    async def half_closing_listener(cmd, listener):
        # aiohttp with autoclose=False can keep writing after it has received a close frame.
        async with aiohttp.ClientSession() as session:
            # The address byte for byte (yarl would decode its %2f otherwise, and the strict emulator refuses).
            async with session.ws_connect(URL(cmd.address, encoded=True), ssl=emulator.ssl_context() or True, autoclose=False) as rdv:
                msg = await rdv.receive()
                events.append(("data", msg.data))
                msg = await rdv.receive()
                events.append(("close", msg.type, msg.data, msg.extra))
                await rdv.send_str("after-close-1")
                await rdv.send_bytes(b"after-close-2")
                await rdv.close(code=4002, message=b"listener done")
        done.set()

    token = sas_token(emulator, "echo")
    async with TestListener(emulator, "echo", token, on_accept=half_closing_listener):
        async with ws_connect(emulator, hc(emulator, "echo", "connect"), token) as ws:
            await ws.send("before")
            # Half-close like .NET Shutdown(): send our close frame, keep reading.
            ws.protocol.send_close(4001, "Shutdown")
            ws.send_data()
            assert await ws.recv() == "after-close-1"
            assert await ws.recv() == b"after-close-2"
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            rcvd = ws.protocol.close_rcvd
            if profile == "strict":
                assert (rcvd.code, rcvd.reason) == (1011, "The listener closed the connection with an error.")
            else:
                assert rcvd.code == 4002 and rcvd.reason == "listener done"
        await asyncio.wait_for(done.wait(), 5)
    assert events[0] == ("data", "before")
    assert events[1][1] == aiohttp.WSMsgType.CLOSE
    if profile == "strict":
        assert events[1][2:] == (1011, "The sender closed the connection with an error.")
    else:
        assert events[1][2:] == (4001, "Shutdown")


@pytest.mark.parametrize("code, reason, expected", [
    (1000, "Shutdown", (1001, "The sender closed the connection.")),  # .NET's half-close
    (4321, "sender says bye", (1011, "The sender closed the connection with an error.")),
])
async def test_service_close_codes_on_accept_socket(emulator, code, reason, expected):
    """Strict: the listener sees the service's close frame (1001 when the sender shuts down), not the sender's."""
    closes: asyncio.Queue = asyncio.Queue()

    async def recorder(cmd, listener):
        async with ws_connect(emulator, cmd.address) as rdv:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for _ in rdv:
                    pass
            await closes.put((rdv.protocol.close_rcvd.code, rdv.protocol.close_rcvd.reason))

    token = sas_token(emulator, "echo")
    async with TestListener(emulator, "echo", token, on_accept=recorder):
        async with ws_connect(emulator, hc(emulator, "echo", "connect"), token) as ws:
            await ws.close(code=code, reason=reason)
        assert await asyncio.wait_for(closes.get(), 5) == expected


async def test_sender_close_code_reaches_listener(lenient_emulator):
    """Lenient profile (serviceCloseCodes false): the sender's code and reason are forwarded."""
    emulator = lenient_emulator
    closes: asyncio.Queue = asyncio.Queue()

    async def recorder(cmd, listener):
        async with ws_connect(emulator, cmd.address) as rdv:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for _ in rdv:
                    pass
            await closes.put((rdv.protocol.close_rcvd.code, rdv.protocol.close_rcvd.reason))

    token = sas_token(emulator, "echo")
    async with TestListener(emulator, "echo", token, on_accept=recorder):
        async with ws_connect(emulator, hc(emulator, "echo", "connect"), token) as ws:
            await ws.close(code=4321, reason="sender says bye")
        assert await asyncio.wait_for(closes.get(), 5) == (4321, "sender says bye")


@pytest.mark.parametrize("prefixed", [True, False])
async def test_reject_reaches_sender_and_listener_gets_410(emulator, prefixed):
    statuses: list[int] = []

    async def reject(cmd, listener):
        if prefixed:
            url = p.reject_url(cmd.address, 418, "I am a teapot + more")
        else:  # Node's spelling
            url = cmd.address + "&statusCode=403&statusDescription=Go+away"
        statuses.append((await handshake_status(emulator, url))[0])

    token = sas_token(emulator, "echo")
    async with TestListener(emulator, "echo", token, on_accept=reject):
        status, reason = await handshake_status(emulator, hc(emulator, "echo", "connect"), token)
    assert (status, reason) == ((418, "I am a teapot + more") if prefixed else (403, "Go away"))
    assert statuses == [410]


async def test_no_listener_and_accept_timeout(fast_emulator):
    emu = fast_emulator
    token = sas_token(emu, "echo")
    status, reason = await handshake_status(emu, hc(emu, "echo", "connect"), token)
    assert status == 404 and reason.startswith(p.MSG_NO_LISTENERS)

    addresses: list[str] = []

    async def ignore(cmd, listener):
        addresses.append(cmd.address)

    async with TestListener(emu, "echo", token, on_accept=ignore):
        status, reason = await handshake_status(emu, hc(emu, "echo", "connect"), token)
        assert status == 504 and reason.startswith(p.MSG_ACCEPT_TIMEOUT)
        # The rendezvous address died with the timeout.
        status, _ = await handshake_status(emu, addresses[0])
        assert status == 403


async def test_listener_quota(fast_emulator):
    emu = fast_emulator
    token = sas_token(emu, "inbound")
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(25):
            await stack.enter_async_context(ws_connect(emu, hc(emu, "inbound", "listen"), token))
        status, reason = await handshake_status(emu, hc(emu, "inbound", "listen"), token)
        assert status == 403 and reason.startswith(p.MSG_TOO_MANY_LISTENERS)
    # Closing frees the slots.
    async with ws_connect(emu, hc(emu, "inbound", "listen"), token):
        pass


async def test_random_balancing_and_listener_filters(emulator):
    token = sas_token(emulator, "echo")
    async with TestListener(emulator, "echo", token) as a, TestListener(emulator, "echo", token) as b:
        for _ in range(24):
            async with ws_connect(emulator, hc(emulator, "echo", "connect"), token) as ws:
                await ws.send("x")
                await ws.recv()
        assert a.accepts > 0 and b.accepts > 0 and a.accepts + b.accepts == 24

        before = (a.accepts, b.accepts)
        for _ in range(4):
            async with ws_connect(emulator, hc(emulator, "echo", "connect"), token,
                                  headers={p.HEADER_ALLOWED_LISTENERS: f"unknown, {a.id.upper()}"}) as ws:
                await ws.send("x")
                await ws.recv()
        assert (a.accepts, b.accepts) == (before[0] + 4, before[1])
        async with ws_connect(emulator, hc(emulator, "echo", "connect"), token,
                              headers={p.HEADER_DISALLOWED_LISTENERS: a.id}) as ws:
            await ws.send("x")
            await ws.recv()
        assert b.accepts == before[1] + 1
        status, reason = await handshake_status(emulator, hc(emulator, "echo", "connect"), token,
                                                headers={p.HEADER_ALLOWED_LISTENERS: "nobody-here"})
        assert status == 404 and reason.startswith(p.MSG_LISTENER_FILTER)


async def test_sender_sees_listener_drop(emulator):
    async def drop(cmd, listener):
        rdv = await ws_connect(emulator, cmd.address)
        await asyncio.sleep(0.05)
        rdv.transport.abort()  # TCP reset, no close frame

    token = sas_token(emulator, "echo")
    async with TestListener(emulator, "echo", token, on_accept=drop):
        async with ws_connect(emulator, hc(emulator, "echo", "connect"), token) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1001


async def test_shutdown_sends_going_away_and_restart_reuses_port():
    from tests.emulator.conftest import FAST_CONFIG
    from tests.fixtures.emulator import start_emulator

    async with start_emulator(FAST_CONFIG, tls=True) as emu:
        token = sas_token(emu, "echo")
        async with TestListener(emu, "echo", token) as listener:
            async with ws_connect(emu, hc(emu, "echo", "connect"), token) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                started = asyncio.get_running_loop().time()
                await emu.stop()
                assert asyncio.get_running_loop().time() - started < 4
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1001
            code, _ = await asyncio.wait_for(listener.closed, 5)
            assert code == 1001
        port = emu.port
        await emu.restart()
        assert emu.port == port
        async with TestListener(emu, "echo", token):  # same keys after the restart
            async with ws_connect(emu, hc(emu, "echo", "connect"), token) as ws:
                await ws.send("again")
                assert await ws.recv() == "again"


async def test_idle_control_channel_dropped_when_configured():
    from tests.emulator.conftest import FAST_CONFIG
    from tests.fixtures.emulator import start_emulator

    async with start_emulator({**FAST_CONFIG, "idleTimeoutSeconds": 0.5, "noListenerHttpStatus": 404}, tls=False) as emu:
        async with aiohttp.ClientSession() as session:  # the no-listener status for HTTP is configurable
            async with session.get(f"{emu.http}/orders", headers={p.HEADER_TOKEN: sas_token(emu, "orders")}) as r:
                assert r.status == 404 and r.reason.startswith(p.MSG_NO_LISTENERS)
        async with TestListener(emu, "orders", sas_token(emu, "orders")) as idle, \
                TestListener(emu, "orders", sas_token(emu, "orders")) as busy:
            for _ in range(6):  # unsolicited pongs (the official clients' keep-alive) count as traffic
                await busy.ws.pong()
                await asyncio.sleep(0.2)
            code, _ = await asyncio.wait_for(idle.closed, 5)
            assert code == 1001 and not busy.closed.done()


@pytest.mark.parametrize("policy", ["close", "answer"])
async def test_ping_on_control_channel(fast_emulator, lenient_emulator, policy):
    """Strict (controlPingPolicy close, the default): a PING from the listener closes its control
    channel with 1008 (a .NET user saw the service drop listeners that ping); answer: a pong comes back."""
    emu = fast_emulator if policy == "close" else lenient_emulator
    async with TestListener(emu, "orders", sas_token(emu, "orders")) as listener:
        waiter = await listener.ws.ping()
        if policy == "close":
            code, reason = await asyncio.wait_for(listener.closed, 5)
            assert code == 1008 and "pong" in reason
        else:
            await asyncio.wait_for(waiter, 5)
            assert not listener.closed.done()


async def test_listener_recycle_when_configured():
    from tests.emulator.conftest import FAST_CONFIG
    from tests.fixtures.emulator import start_emulator

    async with start_emulator({**FAST_CONFIG, "listenerRecycleSeconds": 0.5}, tls=False) as emu:
        async with TestListener(emu, "orders", sas_token(emu, "orders")) as listener:
            code, reason = await asyncio.wait_for(listener.closed, 5)
    assert code == 1011 and "NameRenewalFailed" in reason
