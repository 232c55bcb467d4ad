"""Bad input never crashes the emulator or disturbs other clients.

Each case checks three things: the offender gets a clear status or close code, the
emulator writes a log line saying what happened, and a normal WebSocket + HTTP round
trip on the same emulator still works afterwards (:func:`round_trip`). All cases run
on the shared ``fast_emulator`` (plain ws/http, 1 s timeouts, 256 KiB messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct

import aiohttp
import pytest
import websockets

from relay import protocol as p
from relay import sas
from tests.emulator.drivers import LogWatch, TestListener, handshake_status, hc, round_trip, sas_token, ws_connect

MAX = 256 * 1024  # FAST_CONFIG maxMessageBytes


async def _http(emu, method: str, path: str, data=None, headers=None):
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{emu.http}{path}", data=data, headers=headers or {}) as r:
            return r.status, r.reason, await r.read()


@pytest.mark.parametrize(
    "message, close_code, log_text",
    [
        ("{not json", 1008, "not valid JSON"),
        ('["request", {}]', 1008, "exactly one command key"),
        ("[" * 100_000, 1008, "nested too deeply"),
        ('{"response": {"requestId": 5}}', 1008, "malformed command"),
        (b"a body without its JSON", 1008, "without a command announcing a body"),
        ('{"response": {"requestId": "x", "statusCode": 200, "body": true}}|{"renewToken": {"token": "t"}}',
         1008, "where the body of the previous command was expected"),
    ],
    ids=["bad-json", "not-an-object", "deep-nesting", "bad-shape", "body-without-json", "json-instead-of-body"],
)
async def test_malformed_control_messages_close_that_listener_only(fast_emulator, message, close_code, log_text):
    emu = fast_emulator
    token = sas_token(emu, "orders")
    watch = LogWatch(emu)
    async with TestListener(emu, "orders", token) as bystander, TestListener(emu, "orders", token) as bad:
        for part in message.split("|") if isinstance(message, str) else [message]:
            await bad.ws.send(part)
        code, reason = await asyncio.wait_for(bad.closed, 5)
        assert code == close_code and reason.startswith("Malformed command")
        await watch.wait_for(f"listener {bad.id}", log_text)
        assert not bystander.closed.done()
        # The other listener on the same hybrid connection still serves senders.
        async with ws_connect(emu, hc(emu, "orders", "connect"), token) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
    await round_trip(emu)


async def test_unknown_command_is_logged_and_ignored(fast_emulator):
    emu = fast_emulator
    token = sas_token(emu, "orders")
    watch = LogWatch(emu)
    async with TestListener(emu, "orders", token) as listener:
        await listener.ws.send(json.dumps({"fancyNewCommand": {"x": 1}}))
        # A response for a request nobody is waiting for is ignored too.
        await listener.send(p.encode_command(p.ResponseCommand("no-such-request", 200, "OK", {}, True)), b"stray")
        await watch.wait_for("unknown command 'fancyNewCommand'", "no-such-request")
        async with ws_connect(emu, hc(emu, "orders", "connect"), token) as ws:
            await ws.send("same listener still works")
            assert await ws.recv() == "same listener still works"
        assert not listener.closed.done()
    await round_trip(emu)


async def test_oversized_frames(fast_emulator):
    emu = fast_emulator
    token = sas_token(emu, "orders")
    watch = LogWatch(emu)
    big = b"x" * (MAX + 1)
    # On a control channel: closed with 1009 (message too big).
    async with TestListener(emu, "orders", token) as listener:
        await listener.ws.send(big)
        code, _ = await asyncio.wait_for(listener.closed, 5)
        assert code == 1009
    await watch.wait_for("message too big")
    # From a WebSocket sender: the sender gets 1009, the listener's rendezvous 1001.
    closes: asyncio.Queue = asyncio.Queue()

    async def recorder(cmd, lst):
        async with ws_connect(emu, cmd.address) as rdv:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for _ in rdv:
                    pass
            await closes.put(rdv.protocol.close_rcvd.code if rdv.protocol.close_rcvd else None)

    async with TestListener(emu, "orders", token, on_accept=recorder):
        async with ws_connect(emu, hc(emu, "orders", "connect"), token) as ws:
            await ws.send(big)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1009
        assert await asyncio.wait_for(closes.get(), 5) == 1001
        # An HTTP body over the limit: 413 before the listener hears of it.
        status, reason, _ = await _http(emu, "POST", "/orders", big, {p.HEADER_TOKEN: token})
        assert status == 413 and "TrackingId:" in reason
    await watch.wait_for("413")
    # A chunked body (length unknown up front) streams to the listener's rendezvous until it
    # passes the limit: then that rendezvous is closed with 1009 and the sender gets 413.
    async def chunked():
        for _ in range(4):
            yield b"y" * (MAX // 3)

    async with TestListener(emu, "orders", token) as listener:
        status, _reason, _ = await _http(emu, "POST", "/orders", chunked(), {p.HEADER_TOKEN: token})
        assert status == 413
        for _ in range(50):
            if listener.cut_off:
                break
            await asyncio.sleep(0.05)
        assert listener.cut_off == [1009]
    await round_trip(emu)


@pytest.mark.parametrize(
    "case",
    ["garbage", "truncated-sas", "truncated-jwt", "bearer-only", "sas-prefix-only", "non-ascii", "huge"],
)
async def test_garbage_and_truncated_tokens(fast_emulator, case):
    emu = fast_emulator
    good_sas = sas_token(emu, "orders")
    async with aiohttp.ClientSession() as session:
        async with session.get(emu.identity_endpoint, params={"api-version": "2019-08-01", "resource": sas.RELAY_AUDIENCE},
                               headers={"X-IDENTITY-HEADER": emu.identity_header}) as r:
            good_jwt = (await r.json())["access_token"]
    token = {
        "garbage": "%%%garbage%%%",
        "truncated-sas": good_sas[: len(good_sas) // 2],
        "truncated-jwt": good_jwt[:-10],
        "bearer-only": "Bearer ",
        "sas-prefix-only": "SharedAccessSignature ",
        "non-ascii": "SharedAccessSignature sr=\xe9&sig=\xff&se=1&skn=k",
        "huge": "A" * 7000,
    }[case]
    watch = LogWatch(emu)
    for action in ("listen", "connect"):
        status, reason = await handshake_status(emu, hc(emu, "orders", action), token)
        assert status == 401, (action, status, reason)
        assert any(code in reason for code in ("MalformedToken", "InvalidSignature", "MissingToken")), reason
    status, reason, _ = await _http(emu, "POST", "/orders", b"x", {p.HEADER_TOKEN: token})
    assert status == 401
    text = await watch.wait_for("401")
    assert token.strip() not in text or len(token.strip()) < 8
    await round_trip(emu)


async def test_unknown_and_missing_actions_and_plain_get_under_hc(fast_emulator):
    emu = fast_emulator
    token = sas_token(emu, "orders")
    watch = LogWatch(emu)
    for url in (hc(emu, "orders", "bogus"), f"{emu.relay}/$hc/orders"):
        status, reason = await handshake_status(emu, url, token)
        assert status == 400 and "sb-hc-action" in reason
    status, reason, _ = await _http(emu, "GET", "/$hc/orders?sb-hc-action=listen")
    assert status == 400 and "WebSocket" in reason
    status, reason = await handshake_status(emu, hc(emu, "nope", "connect"), token)
    assert status == 404 and reason.startswith(p.MSG_ENDPOINT_NOT_FOUND)
    await watch.wait_for("400", "sb-hc-action", "404")
    await round_trip(emu)


async def test_listener_that_never_answers(fast_emulator):
    """WS: accept never opened -> 504; HTTP: request never answered, on the control channel or
    on an opened rendezvous -> 504. The listener itself keeps working afterwards."""
    emu = fast_emulator
    token = sas_token(emu, "orders")
    watch = LogWatch(emu)
    silent = True

    async def accept(cmd, listener):
        if not silent:
            await TestListener.echo_accept(cmd, listener)

    async with TestListener(emu, "orders", token, on_accept=accept) as listener:
        status, reason = await handshake_status(emu, hc(emu, "orders", "connect"), token)
        assert status == 504 and reason.startswith(p.MSG_ACCEPT_TIMEOUT)

        async def mute(cmd, body):
            if cmd.is_address_only:  # open the rendezvous, read the request, then say nothing
                async with ws_connect(emu, cmd.address) as rdv:
                    await rdv.recv()
                    await asyncio.sleep(2)
            elif cmd.request_target.endswith("/stall"):  # promise a body, never send it
                await listener.send(p.encode_command(p.ResponseCommand(cmd.id, 200, "OK", {}, True)))

        listener._serve = mute
        for path, data in (("/orders", b"small"), ("/orders", b"y" * (100 * 1024)), ("/orders/stall", b"z")):
            status, reason, _ = await _http(emu, "POST", path, data, {p.HEADER_TOKEN: token})
            assert status == 504 and reason.startswith(p.MSG_RESPONSE_TIMEOUT)
        await watch.wait_for("did not accept", "did not respond")
        silent = False
        async with ws_connect(emu, hc(emu, "orders", "connect"), token) as ws:
            await ws.send("awake now")
            assert await ws.recv() == "awake now"
    await round_trip(emu)


def _raw_http(port: int, head: bytes, body_part: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head + body_part)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close


@pytest.mark.parametrize("declared", [1000, 200 * 1024])
async def test_http_sender_disconnects_mid_body(fast_emulator, declared):
    emu = fast_emulator
    token = sas_token(emu, "orders")
    watch = LogWatch(emu)
    async with TestListener(emu, "orders", token) as listener:
        head = (f"POST /orders HTTP/1.1\r\nHost: {emu.host}\r\nContent-Length: {declared}\r\n"
                f"ServiceBusAuthorization: {token}\r\n\r\n").encode()
        await asyncio.to_thread(_raw_http, emu.port, head, b"z" * 100)
        await watch.wait_for("disconnected before sending the whole body")
        await asyncio.sleep(0.2)
        assert listener.requests == []  # the half request never reached the listener as a whole
        if declared > p.INLINE_LIMIT:
            # Rendezvous form: the body streamed as it came, and the rendezvous was closed mid-message.
            assert listener.cut_off == [1011]
    await round_trip(emu)


async def test_ws_sender_disconnects_mid_message(fast_emulator):
    emu = fast_emulator
    token = sas_token(emu, "orders")
    closes: asyncio.Queue = asyncio.Queue()

    async def recorder(cmd, lst):
        async with ws_connect(emu, cmd.address) as rdv:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for _ in rdv:
                    pass
            await closes.put(rdv.protocol.close_rcvd.code if rdv.protocol.close_rcvd else None)

    watch = LogWatch(emu)
    async with TestListener(emu, "orders", token, on_accept=recorder):
        ws = await ws_connect(emu, hc(emu, "orders", "connect"), token)

        async def fragments():
            yield b"first half of a message"
            await asyncio.sleep(0.2)
            ws.transport.abort()  # TCP dies in the middle of a fragmented message
            yield b"never sent"

        with contextlib.suppress(Exception):
            await ws.send(fragments())
        assert await asyncio.wait_for(closes.get(), 5) == 1001
    await watch.wait_for("went away")
    await round_trip(emu)


async def test_rendezvous_addresses_are_single_use(fast_emulator):
    emu = fast_emulator
    token = sas_token(emu, "orders")
    used: list[str] = []

    async def accept_then_reuse(cmd, listener):
        used.append(cmd.address)
        await TestListener.echo_accept(cmd, listener)

    async with TestListener(emu, "orders", token, on_accept=accept_then_reuse):
        async with ws_connect(emu, hc(emu, "orders", "connect"), token) as ws:
            await ws.send("once")
            assert await ws.recv() == "once"
            status, _ = await handshake_status(emu, used[0])  # second use while the first is live
            assert status == 403
        status, _ = await handshake_status(emu, used[0].replace("sb-hc-secret=", "sb-hc-secret=x"))
        assert status == 403
        status, _ = await handshake_status(emu, hc(emu, "orders", "request", id="no-such-request"))
        assert status == 403
    await round_trip(emu)


async def test_listener_that_stops_reading_its_control_channel(fast_emulator):
    """A listener whose socket stops reading: writes to it back up, yet its senders still get
    504 within the timeouts (not a hang), and other hybrid connections are unaffected."""
    emu = fast_emulator
    token = sas_token(emu, "orders")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", emu.port))
    async with ws_connect(emu, hc(emu, "orders", "listen"), token, sock=sock) as stuck:
        stuck.transport.pause_reading()
        loop = asyncio.get_running_loop()
        started = loop.time()
        body = b"b" * (60 * 1024)  # inline: each request pushes ~60 KiB at the listener, 3.6 MB in all
        results = await asyncio.wait_for(asyncio.gather(
            *(_http(emu, "POST", "/orders", body, {p.HEADER_TOKEN: token}) for _ in range(60)),
            handshake_status(emu, hc(emu, "orders", "connect"), token),
        ), 15)
        assert [r[0] for r in results] == [504] * 61
        assert loop.time() - started < 6
        await round_trip(emu, "inbound")
        stuck.transport.abort()


async def test_request_rendezvous_opened_twice(fast_emulator):
    """A listener that opens a request's rendezvous a second time and drops it does not fail the
    request it is still answering on the first one."""
    emu = fast_emulator
    token = sas_token(emu, "orders")
    async with TestListener(emu, "orders", token) as listener:
        async def twice(cmd, body):
            assert cmd.is_address_only
            async with ws_connect(emu, cmd.address) as first:
                reader = p.CommandReader()
                item = None
                while item is None:
                    item = reader.feed(await first.recv())
                async with ws_connect(emu, cmd.address) as second:
                    await second.close()
                await asyncio.sleep(0.1)
                await first.send(p.encode_command(p.ResponseCommand(cmd.id, 200, "OK", {}, True)))
                await first.send(b"answered once")
                with contextlib.suppress(websockets.ConnectionClosed):
                    await first.wait_closed()

        listener._serve = twice
        status, _, body = await _http(emu, "POST", "/orders", b"r" * (100 * 1024), {p.HEADER_TOKEN: token})
    assert (status, body) == (200, b"answered once")
    await round_trip(emu)


async def test_malformed_response_on_request_rendezvous(fast_emulator):
    emu = fast_emulator
    token = sas_token(emu, "orders")
    closes: list = []
    watch = LogWatch(emu)
    async with TestListener(emu, "orders", token) as listener:
        async def garble(cmd, body):
            async with ws_connect(emu, cmd.address) as rdv:
                await rdv.recv()  # the request
                await rdv.recv()  # its body
                await rdv.send("{this is not a response")
                with contextlib.suppress(websockets.ConnectionClosed):
                    await rdv.recv()
                closes.append(rdv.protocol.close_rcvd.code if rdv.protocol.close_rcvd else None)

        listener._serve = garble
        status, reason, _ = await _http(emu, "POST", "/orders", b"m" * (100 * 1024), {p.HEADER_TOKEN: token})
        assert status == 502 and "malformed" in reason
        for _ in range(40):
            if closes:
                break
            await asyncio.sleep(0.05)
        assert closes == [1008]
        assert not listener.closed.done()  # the control channel is not punished for its rendezvous
    await watch.wait_for("malformed message on its rendezvous")
    await round_trip(emu)
