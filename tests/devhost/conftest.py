"""Fixtures: one devhost subprocess (sample_app, against the session's Azurite) for the module's tests."""

from __future__ import annotations

import aiohttp
import pytest_asyncio

from .helpers import Queues, app_copy, start_devhost, storage_env


@pytest_asyncio.fixture(scope="module")
async def devhost(azurite, tmp_path_factory):
    """One devhost for the module's tests (sample app, queue ``work-items``)."""
    tmp = tmp_path_factory.mktemp("devhost")
    host = await start_devhost(app_copy(tmp), tmp / "state", storage_env(azurite), tmp / "devhost.log")
    try:
        yield host
    finally:
        await host.stop()


@pytest_asyncio.fixture(scope="module")
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(scope="session")
async def queues(azurite):
    return Queues(azurite.connection_string)
