"""The listener's per-request fast paths give exactly what the general code gives.

The response command is written from a template and request commands skip copying header
values that are already strings: these tests hold each fast path to the plain definition in
:mod:`relay.protocol`, byte for byte, on arbitrary input.
"""

from __future__ import annotations

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from relay import protocol as p
from relay._http_serving import encode_response
from relay.relayed_http import RelayedHttpResponse, reason_phrase, response_headers

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
header_names = st.sampled_from(["Content-Type", "X-A", "x-a", "Connection", "Set-Cookie", "ETag", "Ü-Name", 'q"uote'])
header_values = st.one_of(texts, st.integers(), st.just("a\r\nInjected: 1"))
header_sets = st.one_of(
    st.none(),
    st.dictionaries(header_names, header_values, max_size=6),
    st.lists(st.tuples(header_names, header_values), max_size=6),
)
bodies = st.one_of(st.none(), st.binary(max_size=8), texts)


@settings(max_examples=300, deadline=None)
@given(request_id=texts, status=st.integers(100, 999), reason=st.one_of(st.none(), texts), headers=header_sets, body=bodies)
def test_response_template_matches_the_command_encoder(request_id, status, reason, headers, body):
    response = RelayedHttpResponse(status, headers=headers, body=body, reason=reason)
    head, payload, streamed = encode_response(request_id, response)
    text = isinstance(body, str)
    expected = p.encode_command(
        p.ResponseCommand(
            request_id=request_id,
            status_code=status,
            status_description=reason_phrase(status, reason),
            response_headers=response_headers(headers, text),
            body=bool(body),
        )
    )
    assert head == expected
    assert not streamed
    assert payload == (body.encode() if text else body or b"")
    if request_id:  # the decoder requires an id; the listener always has one
        decoded = p.decode_command(head)
        assert decoded.status_code == status and decoded.request_id == request_id


def test_response_headers_scrub_and_fold():
    out = response_headers([("X-A", "1"), ("x-a", 2), ("Connection", "close"), ("B", "v\r\nEvil: 1")], True)
    assert out == {"X-A": "1, 2", "B": "v  Evil: 1", "Content-Type": "text/plain; charset=utf-8"}
    assert response_headers(None, False) == {}
    assert response_headers({}, True) == {"Content-Type": "text/plain; charset=utf-8"}


@settings(max_examples=200, deadline=None)
@given(headers=st.dictionaries(texts, st.one_of(texts, st.integers(), st.booleans(), st.none()), max_size=5),
       port=st.one_of(st.integers(0, 65535), st.text(st.sampled_from("0123456789"), min_size=1, max_size=5), st.booleans()))
def test_request_decode_gives_string_headers_and_endpoint(headers, port):
    import json

    text = json.dumps({"request": {"id": "r1", "address": "wss://h/$hc/e", "method": "GET", "requestTarget": "/e",
                                   "requestHeaders": headers, "remoteEndpoint": {"address": "10.0.0.1", "port": port},
                                   "body": False}})
    command = p.decode_command(text)
    assert command.request_headers == {str(k): v if isinstance(v, str) else str(v) for k, v in headers.items()}
    assert all(type(v) is str for v in command.request_headers.values())
    assert command.remote_endpoint == p.RemoteEndpoint("10.0.0.1", int(port))
    assert type(command.remote_endpoint.port) is int


async def test_handler_deadline_times_out_and_leaves_other_cancellations_alone():
    import asyncio

    from relay._http_serving import _within

    async def value():
        await asyncio.sleep(0)
        return 7

    assert await _within(value(), 5) == 7
    try:
        await _within(asyncio.sleep(10), 0.01)
    except TimeoutError:
        pass
    else:
        raise AssertionError("no TimeoutError")
    # A cancellation from outside stays a cancellation, and the task is not left cancelled.
    started = asyncio.Event()

    async def outer():
        async def wait():
            started.set()
            await asyncio.sleep(10)
        return await _within(wait(), 5)

    task = asyncio.ensure_future(outer())
    await started.wait()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert task.cancelled()
    # After a timeout the task goes on normally (nothing pending from the timer).
    async def after_timeout():
        try:
            await _within(asyncio.sleep(10), 0.01)
        except TimeoutError:
            pass
        await asyncio.sleep(0.02)
        return asyncio.current_task().cancelling()

    assert await after_timeout() == 0


async def test_sender_caches_keep_paths_checked_and_entities_apart():
    import pytest
    from azure.core.credentials import AzureNamedKeyCredential

    from relay import HybridConnectionClient
    from relay.paths import PathError
    from relay.sas import sas_resource_uri

    credential = AzureNamedKeyCredential("k", "a2V5")
    async with HybridConnectionClient("sb://127.0.0.1:9/orders", credential, use_tls=False) as client:
        for _ in range(2):  # refused every time, never remembered
            with pytest.raises(PathError):
                await client.request("GET", "/a/../../secrets")
        provider = client.token_provider
        for address in ("sb://h/orders", "sb://h/billing", "sb://h/orders"):
            assert provider._cache_key(address) == sas_resource_uri(address)
        one = await provider.get_token("sb://h/orders")
        other = await provider.get_token("sb://h/billing")
        assert one.token != other.token


async def _serve_websocket(handler):
    """An aiohttp WebSocket peer on 127.0.0.1 (a free port): ``(runner, port)``; clean up the runner."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def test_stream_keepalive_pings_and_drops_a_silent_peer():
    """The lean heartbeat: a PING every interval; a peer that answers nothing at all is dropped."""
    import asyncio

    import aiohttp
    from aiohttp import web

    from relay._websocket import WebSocketClosed, WebSocket

    pings: list[bytes] = []
    answer = True

    async def handler(request):
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.PING:
                pings.append(msg.data)
                if answer:
                    await ws.pong(msg.data)
        return ws

    runner, port = await _serve_websocket(handler)
    try:
        async with aiohttp.ClientSession() as session:
            ws = await WebSocket.open(session, f"http://127.0.0.1:{port}/", timeout=5)
            assert isinstance(ws, WebSocket)
            ws.keep_alive(0.1)
            await asyncio.sleep(0.5)  # answered: the socket stays open
            assert len(pings) >= 2 and not ws.closed
            answer = False
            with pytest.raises(WebSocketClosed, match="keep-alive"):  # silent peer: dropped, the reader is told why
                await asyncio.wait_for(ws.recv_frame(), 5)
            assert ws.closed
    finally:
        await runner.cleanup()


async def test_handler_deadlines_share_one_timer_and_keep_each_deadline():
    """Many handlers under one HandlerDeadlines: each times out at its own deadline (an earlier
    one started later re-arms the timer), the others finish or keep running untouched."""
    import asyncio

    from relay._http_serving import HandlerDeadlines

    deadlines = HandlerDeadlines()
    release = asyncio.Event()

    async def slow():
        await release.wait()
        return "done"

    async def guarded(awaitable, timeout):
        try:
            return await deadlines.run(awaitable, timeout)
        except TimeoutError:
            return "timeout"

    long_running = asyncio.ensure_future(guarded(slow(), 30))
    fast = asyncio.ensure_future(guarded(asyncio.sleep(0, "fast"), 30))
    await asyncio.sleep(0)
    short = asyncio.ensure_future(guarded(asyncio.sleep(10), 0.05))  # earlier deadline, started later
    assert await short == "timeout"
    assert await fast == "fast"
    assert not long_running.done()
    release.set()
    assert await long_running == "done"
    assert not deadlines._running and not deadlines._expired
    # A handler that is cancelled from outside around its deadline stays cancelled.
    outer = asyncio.ensure_future(deadlines.run(asyncio.sleep(10), 30))
    await asyncio.sleep(0)
    outer.cancel()
    try:
        await outer
    except asyncio.CancelledError:
        pass
    assert outer.cancelled() and not deadlines._running


async def test_commands_coalesce_in_order_and_nothing_follows_the_close_frame():
    """Coalesced commands share one transport write at the loop's next turn; a direct write
    flushes what is held first (order on the socket = order of calls); a close writes what is held
    ahead of its close frame, and nothing is written after it."""
    import asyncio

    import aiohttp
    from aiohttp import web

    from relay._websocket import WebSocketClosed, WebSocket

    received: list = []
    done = asyncio.Event()

    async def handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            received.append(msg.data)
        done.set()
        return ws

    runner, port = await _serve_websocket(handler)
    try:
        async with aiohttp.ClientSession() as session:
            ws = await WebSocket.open(session, f"http://127.0.0.1:{port}/", timeout=5)
            assert isinstance(ws, WebSocket)
            transport = ws._transport
            writes: list[bytes] = []
            real_write = transport.write

            def spy(data):
                writes.append(bytes(data))
                real_write(data)

            transport.write = spy
            await ws.send_command('{"a":1}', b"one", coalesce=True)
            await ws.send_command('{"b":2}', None, coalesce=True)
            assert writes == []  # held for the loop's next turn
            await asyncio.sleep(0)
            assert len(writes) == 1
            await ws.send_command('{"c":3}', b"three", coalesce=True)
            await ws.send_command('{"d":4}', b"four")  # direct: writes the held one first, in one write
            assert len(writes) == 2
            await ws.send_command('{"e":5}', None, coalesce=True)
            await ws.close()
            await asyncio.sleep(0)
            # held at the close: written ahead of the close frame (opcode 0x8), nothing after it
            assert len(writes) == 4 and writes[-1][0] == 0x88
            await asyncio.wait_for(done.wait(), 5)
            with pytest.raises(WebSocketClosed):
                await ws.send_command('{"f":6}', None)
            assert len(writes) == 4
    finally:
        await runner.cleanup()
    assert received == ['{"a":1}', b"one", '{"b":2}', '{"c":3}', b"three", '{"d":4}', b"four", '{"e":5}']


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
whitespace = st.sampled_from(["", " ", "\n", "\t\r\n ", "x", "}", "{}", ",1"])


@settings(max_examples=400, deadline=None)
@given(value=json_values, before=whitespace, after=whitespace, cut=st.integers(0, 40))
def test_command_json_fast_path_is_json_loads(value, before, after, cut):
    """protocol._loads (the scanner straight from position 0) gives json.loads' value, or its error."""
    import json

    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for candidate in (text, before + text + after, text[: max(0, len(text) - cut)]):
        try:
            expected = json.loads(candidate)
        except ValueError as exc:
            try:
                p._loads(candidate)
            except ValueError as got:
                assert str(got) == str(exc)
            else:
                raise AssertionError(f"{candidate!r} decoded, json.loads refuses it")
        else:
            assert p._loads(candidate) == expected


def _unframe(data: bytes) -> list[tuple[int, bool, bytes]]:
    """Parse client frames (masked) the plain way: RFC 6455 §5.2, byte by byte."""
    frames, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b1 & 0x80, "client frames are masked"
        length, pos = b1 & 0x7F, pos + 2
        if length == 126:
            length, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        key, pos = data[pos:pos + 4], pos + 4
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(data[pos:pos + length]))
        frames.append((b0 & 0x0F, bool(b0 & 0x80), payload))
        pos += length
    return frames


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), body=st.one_of(st.none(), st.binary(max_size=300),
                                                  st.sampled_from([b"b" * 125, b"b" * 126, b"b" * 65535, b"b" * 65536])))
def test_command_frames_carry_the_command_and_body_masked(text, body):
    """command_frames (one buffer, C masking, two keys from one draw) against a plain parser,
    and encode_frame (the general path) frame for frame."""
    from relay._frames import BINARY, command_frames, encode_frame

    expected = [(0x1, True, text.encode())] + ([] if body is None else [(BINARY, True, bytes(body))])
    assert _unframe(command_frames(text, body)) == expected
    assert _unframe(b"".join(encode_frame(payload, op, fin) for op, fin, payload in expected)) == expected
    assert _unframe(command_frames(text, None if body is None else memoryview(body))) == expected


@settings(max_examples=400, deadline=None)
@given(entity=st.text(st.sampled_from("aAbΣσςİi/"), min_size=1, max_size=5),
       rest=st.text(st.sampled_from("aAΣσİ/?x="), max_size=6), upper=st.booleans())
def test_request_path_fast_prefix_check_is_the_case_insensitive_one(entity, rest, upper):
    """RelayedHttpRequest strips the entity prefix: the exact-case check first must give what the
    case-insensitive check alone gives (including Unicode whose lower() changes length or context)."""
    from relay.relayed_http import RelayedHttpRequest

    sent = "/" + (entity.upper() if upper else entity) + rest
    path = sent.partition("?")[0]
    prefix = "/" + entity
    if path.lower().startswith(prefix.lower()) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
        path = path[len(prefix):] or "/"
    assert RelayedHttpRequest("GET", sent, None, b"", "id", None, entity).path == (path or "/")


odd_values = st.one_of(st.none(), st.just(""), texts, st.integers(), st.booleans(), st.lists(st.integers(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(address=odd_values, request_id=odd_values, method=st.one_of(st.none(), st.just("GET")),
       body=st.one_of(st.none(), st.booleans()), endpoint=st.one_of(st.none(), st.just({"address": "a", "port": 1})))
def test_request_decode_checks_address_and_id_as_the_general_check(address, request_id, method, body, endpoint):
    """The inlined address/id checks of decode_command accept and refuse exactly what
    _optional_str does, with its messages."""
    import json

    inner = {k: v for k, v in (("address", address), ("id", request_id), ("method", method), ("body", body),
                                ("remoteEndpoint", endpoint)) if v is not None}
    text = json.dumps({"request": inner})
    try:
        want_address = p._optional_str(inner, "address", "request")
        if want_address is None and method is None and body is None:
            raise p.ProtocolError("an address-only 'request' command needs a string 'address'")
        want_id = p._optional_str(inner, "id", "request")
    except p.ProtocolError as exc:
        try:
            p.decode_command(text)
        except p.ProtocolError as got:
            assert str(got) == str(exc)
        else:
            raise AssertionError("accepted what the general check refuses")
        return
    command = p.decode_command(text)
    assert (command.address, command.id) == (want_address, want_id)
    assert command.remote_endpoint == (p.RemoteEndpoint("a", 1) if endpoint else None)
