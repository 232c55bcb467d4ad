"""Listener token lifetime: expiry closes the control channel with 1008, renewToken keeps it alive."""

from __future__ import annotations

import asyncio
import copy
import time

import aiohttp

from relay import protocol as p
from relay import sas
from tests.emulator.conftest import FAST_CONFIG
from tests.emulator.drivers import TestListener, handshake_status, hc, sas_token, ws_connect
from tests.fixtures.emulator import start_emulator


async def test_expired_listener_token_closes_with_1008(fast_emulator):
    emu = fast_emulator  # token grace 0
    async with TestListener(emu, "orders", sas_token(emu, "orders", ttl=1)) as listener:
        started = time.monotonic()
        code, reason = await asyncio.wait_for(listener.closed, 5)
    assert code == 1008 and "ExpiredToken" in reason
    assert time.monotonic() - started < 3


async def test_expired_token_refused_at_handshake(fast_emulator):
    emu = fast_emulator
    status, reason = await handshake_status(emu, hc(emu, "orders", "listen"), sas_token(emu, "orders", ttl=-5))
    assert status == 401 and reason.startswith(p.MSG_EXPIRED_TOKEN)


async def test_renew_token_keeps_listener_alive(fast_emulator):
    emu = fast_emulator
    async with TestListener(emu, "orders", sas_token(emu, "orders", ttl=1)) as listener:
        await listener.renew(sas_token(emu, "orders", "listen-orders", ttl=3600))
        await asyncio.sleep(2)
        assert not listener.closed.done()
        async with ws_connect(emu, hc(emu, "orders", "connect"), sas_token(emu, "orders")) as ws:
            await ws.send("still here")
            assert await ws.recv() == "still here"


async def test_invalid_renew_closes_with_1008(fast_emulator):
    emu = fast_emulator
    async with TestListener(emu, "orders", sas_token(emu, "orders")) as listener:
        await listener.renew(sas_token(emu, "orders", "send-orders"))  # valid signature, no Listen right
        code, reason = await asyncio.wait_for(listener.closed, 5)
    assert code == 1008 and "'Listen'" in reason


async def test_short_lived_jwt_expires_after_grace_and_renews():
    config = {**copy.deepcopy(FAST_CONFIG), "tokenLifetimeSeconds": 2, "tokenGraceSeconds": 2}
    async with start_emulator(config, tls=False) as emu:
        async def fetch() -> str:
            async with aiohttp.ClientSession() as session:
                async with session.get(emu.identity_endpoint, params={"api-version": "2019-08-01", "resource": "https://relay.azure.net"},
                                       headers={"X-IDENTITY-HEADER": emu.identity_header}) as r:
                    return (await r.json())["access_token"]

        token = await fetch()
        exp = sas.jwt_claims(token)["exp"]
        async with TestListener(emu, "orders", token) as doomed, TestListener(emu, "orders", await fetch()) as renewed:
            await asyncio.sleep(max(0.0, exp + 0.5 - time.time()))  # past exp, inside the 2 s grace
            assert not doomed.closed.done()
            await renewed.renew(sas_token(emu, "orders", ttl=3600))  # JWT start, SAS renewal: both accepted
            code, reason = await asyncio.wait_for(doomed.closed, 6)
            assert code == 1008 and "ExpiredToken" in reason
            assert time.time() >= exp + 2 - 0.5  # not before the grace ran out (1 s clock granularity)
            assert not renewed.closed.done()
