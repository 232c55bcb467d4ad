"""WebSocket senders and listeners through the emulator: this library on both ends."""

import asyncio

import pytest

from relay import ConnectionLostError, NoListenerError, RejectedError

from .conftest import make_client, make_listener

MB = 1024 * 1024


async def echo_all(listener):
    async for stream in listener:
        asyncio.ensure_future(echo(stream))


async def echo(stream):
    async with stream:
        async for message in stream:
            await stream.send(message)


@pytest.fixture
async def echo_listener(emulator):
    async with make_listener(emulator) as listener:
        task = asyncio.ensure_future(echo_all(listener))
        yield listener
        task.cancel()


async def test_echo_text_and_binary(echo_listener, client):
    async with await client.connect() as stream:
        await stream.send("text stays text")
        assert await stream.receive() == "text stays text"
        await stream.send(b"\x00\x01binary")
        assert await stream.receive() == b"\x00\x01binary"
        big = bytes(range(256)) * (MB // 256)
        await stream.send(big)
        assert await stream.receive() == big
        await stream.send(big[: MB // 2])
        assert len(await stream.receive()) == MB // 2


async def test_listener_sends_first_and_sees_the_handshake(emulator, client):
    seen = {}

    def on_accept(ctx):
        seen.update(headers=dict(ctx.headers), url=ctx.url, offered=ctx.subprotocols)
        ctx.subprotocol = "chat.v2"
        return True

    async with make_listener(emulator, accept_handler=on_accept) as listener:
        stream = await client.connect(path="/room/7?lang=en", headers={"X-Tenant": "t1"}, subprotocols=["chat.v1", "chat.v2"])
        async with stream:
            server_side = await asyncio.wait_for(listener.accept(), 5)
            assert stream.subprotocol == "chat.v2" and server_side.subprotocol == "chat.v2"
            await server_side.send(b"hello sender")
            assert await stream.receive() == b"hello sender"
            assert server_side.headers["x-tenant"] == "t1"
            # close() waits for the peer's answer, so the sender reads concurrently.
            _, last = await asyncio.gather(server_side.close(), stream.receive())
            assert last is None and stream.close_code == 1000
    assert seen["offered"] == ["chat.v1", "chat.v2"]
    assert seen["url"].endswith("/orders/room/7?lang=en")
    assert "ServiceBusAuthorization" not in seen["headers"]


async def test_reject_path(emulator, client):
    def reject(ctx):
        if ctx.headers.get("X-Let-Me-In") == "please":
            return True
        ctx.status_code, ctx.status_description = 403, "Tenant not allowed"
        return False

    async def failing(ctx):
        raise RuntimeError("bug in accept handler")

    async with make_listener(emulator, accept_handler=reject):
        with pytest.raises(RejectedError) as info:
            await client.connect()
        assert info.value.status == 403 and info.value.description == "Tenant not allowed"
    async with make_listener(emulator, accept_handler=lambda ctx: False):
        with pytest.raises(RejectedError) as info:
            await client.connect()
        assert (info.value.status, info.value.description) == (400, "Rejected by user code")
    async with make_listener(emulator, accept_handler=failing):
        with pytest.raises(RejectedError) as info:
            await client.connect()
        assert info.value.status == 502


async def test_shutdown_half_close(emulator, client):
    async with make_listener(emulator) as listener:
        stream = await client.connect()
        server_side = await asyncio.wait_for(listener.accept(), 5)
        await stream.send("last words")
        await stream.shutdown()
        assert await server_side.receive() == "last words"
        assert await server_side.receive() is None
        # The service's own close frame (strict emulator), not the sender's "Shutdown": still a half-close.
        assert server_side.close_code == 1001
        await server_side.send("reply after shutdown")  # the other direction still flows
        await server_side.close()
        assert await stream.receive() == "reply after shutdown"
        assert await stream.receive() is None
        with pytest.raises(ConnectionLostError):
            await stream.send("too late")
        await stream.close()


async def test_clean_close_from_the_service_ends_the_receive_side_only(emulator, client):
    """A full close 1000 from the listener reaches the sender as the service's 1000: the sender may
    still send (half-close, as .NET), and the listener side reads it until it closes."""
    async with make_listener(emulator) as listener:
        stream = await client.connect()
        server_side = await asyncio.wait_for(listener.accept(), 5)
        await server_side.shutdown()
        assert await stream.receive() is None and stream.close_code == 1000
        await stream.send("after the listener closed")
        assert await server_side.receive() == "after the listener closed"
        await stream.close()
        assert await server_side.receive() is None
        await server_side.close()


async def test_error_close_raises(emulator, client):
    async with make_listener(emulator) as listener:
        stream = await client.connect()
        server_side = await asyncio.wait_for(listener.accept(), 5)
        closing = asyncio.ensure_future(server_side.close(1011, "listener failure"))
        with pytest.raises(ConnectionLostError, match="1011"):
            await stream.receive()
        await closing


async def test_no_listener_and_allowed_listeners(emulator):
    async with make_client(emulator, "inbound") as c:
        with pytest.raises(NoListenerError):
            await c.connect(timeout=10)
    async with make_listener(emulator, "inbound") as listener, make_client(emulator, "inbound") as c:
        with pytest.raises(NoListenerError, match="AllowedListeners"):
            await c.connect(allowed_listeners=["11111111-1111-1111-1111-111111111111"], timeout=10)
        stream = await c.connect(allowed_listeners=[listener.listener_id])
        server_side = await asyncio.wait_for(listener.accept(), 5)
        await asyncio.gather(stream.close(), server_side.receive())


async def test_accept_returns_none_after_close(emulator):
    listener = make_listener(emulator)
    async with listener:
        waiter = asyncio.ensure_future(listener.accept())
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(waiter, 5) is None
    assert listener.state == "closed" and not listener.is_online


async def test_keepalive_pings_through_the_relay_keep_both_ends_open(emulator):
    """Short keep-alive on both ends: the PINGs on the sender socket and the rendezvous are
    answered through the emulator, so an idle stream stays open and still carries messages."""
    async with make_listener(emulator, keepalive_interval=0.1) as listener, \
            make_client(emulator, keepalive_interval=0.1) as client:
        task = asyncio.ensure_future(echo_all(listener))
        try:
            stream = await client.connect()
            await stream.send(b"before")
            assert await stream.receive() == b"before"
            await asyncio.sleep(0.6)  # several intervals without a message
            assert not stream.closed
            await stream.send(b"after")
            assert await stream.receive() == b"after"
            await stream.close()
        finally:
            task.cancel()
