"""Long-lived listeners: token renewal across lifetimes, reconnect after a restart, graceful close."""

import asyncio
import time

import pytest
from azure.identity.aio import ManagedIdentityCredential

from relay import EndpointNotFoundError, RelayedHttpResponse, get_token_provider
from tests.fixtures.emulator import TEST_CONFIG, identity, start_emulator

from .conftest import make_client, make_listener


async def ok(request):
    return RelayedHttpResponse(200, body=b"ok")


async def test_listener_stays_online_across_token_lifetimes(monkeypatch):
    config = {**TEST_CONFIG, "tokenLifetimeSeconds": 4, "tokenGraceSeconds": 1}
    async with start_emulator(config, tls=False) as emu:
        for name, value in emu.identity_env().items():
            monkeypatch.setenv(name, value)
        events = []
        async with ManagedIdentityCredential(client_id=identity(config, "listener")["clientId"]) as listen_cred, \
                ManagedIdentityCredential(client_id=identity(config, "sender")["clientId"]) as send_cred:
            listener = make_listener(emu, credential=listen_cred, request_handler=ok,
                                     on_connecting=lambda: events.append("connecting"), on_online=lambda: events.append("online"))
            async with listener, make_client(emu, credential=send_cred) as client:
                deadline = time.monotonic() + 10  # two and a half token lifetimes
                while time.monotonic() < deadline:
                    resp = await client.request("GET", "/")
                    assert resp.status == 200 and await resp.read() == b"ok"
                    assert listener.is_online
                    await asyncio.sleep(0.25)
                assert events == ["connecting", "online"]  # never dropped: renewToken kept it alive
                assert get_token_provider(listen_cred).fetch_count >= 3
                assert get_token_provider(send_cred).fetch_count >= 3


async def test_reconnect_after_emulator_restart():
    async with start_emulator(TEST_CONFIG, tls=False) as emu:
        online = asyncio.Event()
        events = []

        def on_online():
            events.append("online")
            online.set()

        listener = make_listener(emu, request_handler=ok, on_online=on_online,
                                 on_connecting=lambda: events.append("connecting"), on_offline=lambda: events.append("offline"))
        async with listener, make_client(emu) as client:
            assert (await client.request("GET", "/")).status == 200
            online.clear()
            await emu.restart()
            await asyncio.wait_for(online.wait(), 15)
            assert listener.is_online and listener.last_error is None
            resp = await client.request("GET", "/again")
            assert resp.status == 200
        assert events[:4] == ["connecting", "online", "connecting", "online"]
        assert events[-1] == "offline"


async def test_unknown_entity_fails_open(emulator):
    listener = make_listener(emulator, "no-such-hc")
    with pytest.raises(EndpointNotFoundError, match="Endpoint does not exist"):
        await listener.open()
    assert listener.state == "offline" and not listener.is_online


async def test_close_lets_inflight_requests_finish(emulator):
    started = asyncio.Event()

    async def slow(request):
        started.set()
        await asyncio.sleep(0.5)
        return RelayedHttpResponse(200, body=b"finished")

    async with make_client(emulator) as client:
        listener = make_listener(emulator, request_handler=slow)
        await listener.open()
        pending = asyncio.ensure_future(client.request("GET", "/slow"))
        await asyncio.wait_for(started.wait(), 5)
        await listener.close()
        resp = await pending
        assert resp.status == 200 and await resp.read() == b"finished"


async def test_keepalive_pings_are_answered(emulator):
    async with make_listener(emulator, request_handler=ok, keepalive_interval=0.2) as listener, make_client(emulator) as client:
        await asyncio.sleep(1.2)  # several ping/pong rounds; a missed pong would drop the control channel
        assert listener.is_online and listener.last_error is None
        assert (await client.request("GET", "/")).status == 200


async def test_deleted_entity_is_not_retried():
    """A hybrid connection that disappears (404 on reconnect) takes the listener offline for good."""
    async with start_emulator(TEST_CONFIG, tls=False) as emu:
        offline = asyncio.Event()
        attempts = []
        listener = make_listener(emu, "inbound", on_offline=offline.set, on_connecting=lambda: attempts.append(1))
        await listener.open()
        try:
            # Restart the emulator without "inbound" (as if it had been deleted).
            emu._requested_config = {**TEST_CONFIG, "hybridConnections": [
                hc for hc in TEST_CONFIG["hybridConnections"] if hc["name"] != "inbound"]}
            await emu.restart()
            await asyncio.wait_for(offline.wait(), 10)
            assert listener.state == "offline" and isinstance(listener.last_error, EndpointNotFoundError)
            await asyncio.sleep(1.5)
            assert len(attempts) == 2  # the first connect and one reconnect attempt: no retry after 404
        finally:
            await listener.close()


async def test_twenty_sixth_listener_hits_the_quota(emulator):
    """The service allows 25 listeners per hybrid connection; the 26th gets a transient QuotaExceededError."""
    from relay import QuotaExceededError

    listeners = [make_listener(emulator, "orders/eu", request_handler=ok) for _ in range(26)]
    try:
        await asyncio.gather(*(listener.open() for listener in listeners[:25]))
        with pytest.raises(QuotaExceededError) as info:
            await listeners[25].open()
        assert info.value.is_transient and info.value.status == 403
        assert "maximum number of listeners (25)" in str(info.value)
        assert listeners[25].state == "offline" and all(listener.is_online for listener in listeners[:25])
        await listeners[0].close()  # a slot frees up: trying again now succeeds
        await listeners[25].open()
        assert listeners[25].is_online
    finally:
        await asyncio.gather(*(listener.close() for listener in listeners))
