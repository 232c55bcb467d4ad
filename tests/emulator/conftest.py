"""A second emulator with tiny timeouts (and no TLS) for the timeout, quota and expiry tests."""

from __future__ import annotations

import copy

import pytest_asyncio

from emulator.config import LENIENT_PROFILE
from tests.fixtures.emulator import TEST_CONFIG, start_emulator

FAST_CONFIG = {
    **copy.deepcopy(TEST_CONFIG),
    "acceptTimeoutSeconds": 1,
    "responseTimeoutSeconds": 1,
    "tokenGraceSeconds": 0,
    "listenerLimit": 25,
    "maxMessageBytes": 256 * 1024,  # the oversized-frame tests send more than this
}


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fast_emulator():
    """Plain ws:// / http:// emulator: accept and response timeouts 1 s, no token grace, 256 KiB messages."""
    async with start_emulator(FAST_CONFIG, tls=False) as emu:
        yield emu
        # All the bad-input tests run here: whatever they sent, nothing may have crashed.
        log = emu.log_path.read_text()
        assert "Traceback" not in log and " ERROR " not in log, log[-4000:]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def lenient_emulator():
    """Plain ws:// emulator with every strict-profile key at its lenient value (the pre-issue-9 model)."""
    async with start_emulator({**copy.deepcopy(TEST_CONFIG), **LENIENT_PROFILE}, tls=False) as emu:
        yield emu
