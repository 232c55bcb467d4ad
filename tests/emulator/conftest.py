"""A second emulator with tiny timeouts (and no TLS) for the timeout, quota and expiry tests."""

from __future__ import annotations

import copy

import pytest_asyncio

from tests.fixtures.emulator import TEST_CONFIG, start_emulator

FAST_CONFIG = {
    **copy.deepcopy(TEST_CONFIG),
    "acceptTimeoutSeconds": 1,
    "responseTimeoutSeconds": 1,
    "tokenGraceSeconds": 0,
    "listenerLimit": 25,
}


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fast_emulator():
    """Plain ws:// / http:// emulator: accept and response timeouts 1 s, no token grace."""
    async with start_emulator(FAST_CONFIG, tls=False) as emu:
        yield emu
