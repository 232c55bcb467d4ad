"""Issue 11 row 4: the inbound side has limits (body size, HTTP requests in flight, WebSocket streams, idle streams).

The listener window runs for real (relay library listener, emulator, Azurite). Tests assert
outcomes (413, 503 + Retry-After, a refused or closed stream, nothing stored), never timings:
requests are held in flight by bodies that wait on an event, not by sleeps.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from bridge import listener
from bridge.settings import (
    INBOUND_MAX_BODY_BYTES,
    INBOUND_MAX_CONCURRENT_REQUESTS,
    INBOUND_MAX_WS_STREAMS,
    INBOUND_WS_IDLE_SECONDS,
    SettingsError,
    get_settings,
    load_settings,
)
from relay.client import HybridConnectionClient
from relay.errors import ConnectionLostError, NoListenerError, RejectedError

from .conftest import app_env, clear_queue, drain_queue, root_credential

WINDOW = 6.0


def sender(emulator) -> HybridConnectionClient:
    return HybridConnectionClient(emulator.address("inbound"), root_credential(emulator), connection_verify=emulator.ca_cert)


async def when_online(call):
    for _ in range(200):
        try:
            return await call()
        except NoListenerError:
            await asyncio.sleep(0.05)
    raise AssertionError("the listener window never came online")


@pytest.fixture
async def inbound_queue(azurite, bridge_env):
    await clear_queue(azurite.connection_string, "app-inbound")

    async def read(expect: int, timeout: float = 5) -> list[dict]:
        return [json.loads(m) for m in await drain_queue(azurite.connection_string, "app-inbound", expect=expect, timeout=timeout)]

    return read


def test_defaults_and_validation(emulator, azurite):
    s = load_settings(app_env(emulator, azurite))
    assert (s.inbound_max_body_bytes, s.inbound_max_concurrent_requests, s.inbound_max_ws_streams, s.inbound_ws_idle_seconds) == (
        16 * 1024 * 1024, 16, 100, 120)
    for name, bad in ((INBOUND_MAX_BODY_BYTES, "lots"), (INBOUND_MAX_BODY_BYTES, "0"), (INBOUND_MAX_CONCURRENT_REQUESTS, "0"),
                      (INBOUND_MAX_WS_STREAMS, "-1"), (INBOUND_WS_IDLE_SECONDS, "0")):
        with pytest.raises(SettingsError) as info:
            load_settings(app_env(emulator, azurite, **{name: bad}))
        assert name in str(info.value)


async def test_a_body_over_the_limit_is_413_and_not_stored(emulator, bridge_env, inbound_queue):
    bridge_env(**{INBOUND_MAX_BODY_BYTES: "100000"})
    window = asyncio.create_task(listener.run_window(get_settings(), "inbound", WINDOW))
    async with sender(emulator) as client:
        big = await when_online(lambda: client.request("POST", "/big", body=b"x" * 300_000))
        assert big.status == 413, await big.text()
        answer = await big.json()
        assert answer["error"] == "payload_too_large" and "100000" in answer["message"]

        async def chunks():  # no Content-Length: the limit holds on the bytes counted as they arrive
            for _ in range(30):
                yield b"y" * 10_000

        streamed = await client.request("POST", "/streamed", body=chunks())
        assert streamed.status == 413
        ok = await client.request("POST", "/ok", body=b"z" * 90_000)
        assert ok.status == 202
    counts = await window
    assert counts.stored == 1
    [message] = await inbound_queue(1)
    assert message["path"] == "/ok"
    assert await inbound_queue(1, timeout=0.5) == []


async def test_requests_beyond_the_in_flight_limit_get_503_with_retry_after(emulator, bridge_env, inbound_queue):
    """Three requests whose bodies are held back by the senders: two occupy the two slots, the third is refused at once."""
    bridge_env(**{INBOUND_MAX_CONCURRENT_REQUESTS: "2"})
    window = asyncio.create_task(listener.run_window(get_settings(), "inbound", WINDOW))
    release = asyncio.Event()

    async def held_body():
        yield b"f" * 70_000  # over the 64 KiB inline threshold: the service starts the rendezvous at once
        await release.wait()
        yield b"rest"

    async def post(i: int):
        response = await client.request("POST", f"/held/{i}", body=held_body())
        return i, response.status, dict(response.headers), await response.read()

    async with sender(emulator) as client:
        await when_online(lambda: client.request("GET", "/warmup"))
        tasks = [asyncio.create_task(post(i)) for i in range(3)]
        done, pending = await asyncio.wait(tasks, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(pending) == 2, "the request beyond the limit was not answered while two were held"
        refused, status, headers, body = done.pop().result()
        assert status == 503 and headers.get("Retry-After"), (status, headers, body)
        assert json.loads(body)["error"] == "too_many_requests"
        release.set()
        accepted = [await task for task in pending]
        assert [status for _, status, _, _ in accepted] == [202, 202]
    await window
    stored = await inbound_queue(3)
    assert sorted(m["path"] for m in stored) == sorted({"/warmup", *(f"/held/{i}" for i, _, _, _ in accepted)})


async def test_websocket_streams_beyond_the_limit_are_refused(emulator, bridge_env, inbound_queue):
    bridge_env(**{INBOUND_MAX_WS_STREAMS: "2"})
    window = asyncio.create_task(listener.run_window(get_settings(), "inbound", WINDOW))
    async with sender(emulator) as client:
        streams = []
        for i in range(2):
            stream = await when_online(lambda: client.connect(path=f"/ws/{i}"))
            await stream.send(f"hello {i}")
            streams.append(stream)
        await inbound_queue(2)  # both streams are being served
        with pytest.raises(RejectedError) as info:
            await client.connect(path="/ws/3")
        assert info.value.status == 503
        for stream in streams:
            await stream.close()
        stream = await client.connect(path="/ws/after")  # a slot is free again
        await stream.send("later")
        await stream.close()
    await window
    [later] = await inbound_queue(1)
    assert later["path"] == "/ws/after"


async def test_an_idle_stream_is_closed_with_1001(emulator, bridge_env, inbound_queue):
    bridge_env(**{INBOUND_WS_IDLE_SECONDS: "1"})
    window = asyncio.create_task(listener.run_window(get_settings(), "inbound", WINDOW))
    async with sender(emulator) as client:
        stream = await when_online(lambda: client.connect(path="/idle"))
        await stream.send("one")
        assert await asyncio.wait_for(stream.receive(), WINDOW) is None  # closed by the bridge, before the window ends
        # The bridge closes with 1001; Relay (strict emulator, as Azure) relays a clean listener close
        # to the sender as its own 1000, not the listener's code.
        assert stream.close_code == 1000
        await stream.close()
    counts = await window
    assert counts.wsStreams == 1 and counts.stored == 1


async def test_a_websocket_message_over_the_limit_closes_the_stream_with_1009(emulator, bridge_env, inbound_queue):
    bridge_env(**{INBOUND_MAX_BODY_BYTES: "1024"})
    window = asyncio.create_task(listener.run_window(get_settings(), "inbound", WINDOW))
    async with sender(emulator) as client:
        stream = await when_online(lambda: client.connect(path="/big-ws"))
        await stream.send("small")
        await stream.send(b"x" * 5000)
        with pytest.raises(ConnectionLostError):
            while await asyncio.wait_for(stream.receive(), WINDOW) is not None:
                pass
        # The bridge closes with 1009; Relay sends the sender its own code for an abnormal close (1011).
        assert stream.close_code == 1011
        await stream.close()
    counts = await window
    assert counts.stored == 1
    [message] = await inbound_queue(1)
    assert message["body"] == "small"
