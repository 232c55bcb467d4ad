"""The real app end to end through the local host: ``python -m devhost`` serving /work/main's
function_app.py as a subprocess, against the session's Azurite and Relay emulator, with an
on-premises echo service behind ``python -m relay listen`` (also a subprocess).

One :class:`BridgeStack` per module (``stack`` fixture): its environment overrides
local.settings.json the way app settings do, and its private state dir keeps durable SQLite
and keys away from the developer's ``.local/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict

from tests.app.conftest import ROOT_RULE, clear_queue
from tests.devhost.helpers import REPO, DevHost, start_devhost

OUTBOUND = "orders,echo"        # both exist in the emulator's TEST_CONFIG; only "orders" gets an on-prem listener
ONPREM = "orders"
NO_LISTENER = "echo"
INBOUND = "inbound"
WINDOW_SECONDS = 8               # overlap 2 s: a handover every ~6 s, so it happens during the tests
INBOUND_DEFAULT_QUEUE = "e2e-inbound"
ROUTES = [{"pathPrefix": "/orders", "queue": "e2e-orders-in"},
          {"header": "X-Route", "value": "eu", "queue": "e2e-eu-in"}]
CLAIM_CHECK_CONTAINER = "e2e-claimcheck"
VISIBILITY_OVERRIDE = "00:00:01"  # host.json says 30 s; the real host honours the same app setting


def bridge_host_env(emulator, azurite, **overrides: str) -> dict[str, str]:
    """App settings for the devhost subprocess (they win over local.settings.json, as in the host)."""
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "BridgeStorage": azurite.connection_string,
        "RELAY_NAMESPACE": emulator.host,
        "RELAY_CA_FILE": emulator.ca_cert or "",
        "RELAY_CLIENT_ID": "",
        "RELAY_OUTBOUND_CONNECTIONS": OUTBOUND,
        "RELAY_DEFAULT_CONNECTION": ONPREM,
        "RELAY_INBOUND_CONNECTIONS": INBOUND,
        "INBOUND_ROUTES": json.dumps(ROUTES),
        "INBOUND_DEFAULT_QUEUE": INBOUND_DEFAULT_QUEUE,
        "CLAIM_CHECK_CONTAINER": CLAIM_CHECK_CONTAINER,
        "LISTENER_WINDOW_SECONDS": str(WINDOW_SECONDS),
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": VISIBILITY_OVERRIDE,
        "PYTHONUNBUFFERED": "1",
        **emulator.identity_env(),
    }
    env.update(overrides)
    return env


async def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` (sync or async) until it returns a truthy value; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


# ---- the on-premises side ----------------------------------------------------------------------
@dataclass
class EchoService:
    """An on-premises HTTP service: records every request, answers 201 with the same body."""

    port: int = 0
    seen: list[dict] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            self.seen.append({"method": request.method, "path_qs": request.path_qs,
                              "headers": CIMultiDict(request.headers), "body": body})
            return web.Response(status=201, body=body, headers={
                "Content-Type": request.headers.get("Content-Type", "application/octet-stream"),
                "X-Echo-Path": request.path_qs, "X-Echo-Method": request.method})

        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def requests_with(self, header: str, value: str) -> list[dict]:
        return [r for r in self.seen if r["headers"].get(header) == value]


async def start_relay_forwarder(emulator, entity: str, target: str, log_path: Path) -> asyncio.subprocess.Process:
    """``python -m relay listen sb://127.0.0.1:PORT/<entity> --forward <target>`` with the namespace SAS key."""
    log = open(log_path, "ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "listen", emulator.address(entity), "--forward", target,
        "--sas-key-name", ROOT_RULE, "--ca-file", emulator.ca_cert, "-v",
        cwd=str(REPO), env={**os.environ, "RELAY_SAS_KEY": emulator.sas_key(ROOT_RULE)},
        stdout=log, stderr=log)
    log.close()

    def online():
        text = log_path.read_text(errors="replace")
        if process.returncode is not None or "error:" in text:
            raise AssertionError(f"relay listen exited:\n{text}")
        return "online:" in text

    try:
        await wait_until(online, 30, "python -m relay listen to come online")
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    return process


async def stop_process(process: asyncio.subprocess.Process, timeout: float = 10) -> int:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
    return process.returncode


# ---- the Functions side ------------------------------------------------------------------------
@dataclass
class BridgeStack:
    """The real app in a devhost subprocess; ``restart()`` keeps the state dir (durable SQLite, keys)."""

    env: dict[str, str]
    state_dir: Path
    log_path: Path
    host: DevHost | None = None
    starts: int = 0

    async def start(self) -> DevHost:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== devhost start #{self.starts} =====\n".encode())
        self.host = await start_devhost(REPO, self.state_dir, self.env, self.log_path)
        return self.host

    async def kill(self) -> None:
        """SIGKILL, like a crashed or recycled host."""
        if self.host is not None:
            await self.host.kill()

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # HTTP helpers against the current host
    @property
    def api(self) -> str:
        return self.host.info["api"]

    async def listeners(self, http: aiohttp.ClientSession) -> dict:
        async with http.get(f"{self.api}/listeners", headers={"x-functions-key": self.host.master_key}) as response:
            assert response.status == 200, await response.text()
            [status] = (await response.json())["listeners"]
            return status


@pytest_asyncio.fixture(scope="module")
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(scope="module")
async def echo_service():
    service = EchoService()
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest_asyncio.fixture(scope="module")
async def onprem(emulator, echo_service, tmp_path_factory):
    """The echo service published on the ``orders`` hybrid connection by the relay CLI."""
    log_path = tmp_path_factory.mktemp("onprem") / "relay-listen.log"
    process = await start_relay_forwarder(emulator, ONPREM, echo_service.url, log_path)
    try:
        yield echo_service
    finally:
        await stop_process(process)


@pytest_asyncio.fixture(scope="module")
async def stack(emulator, azurite, tmp_path_factory):
    """The real app served by a devhost subprocess (private state dir), stopped after the module."""
    tmp = tmp_path_factory.mktemp("e2e-host")
    for queue in ("relay-outbound", "relay-outbound-poison", "relay-outbound-failed", INBOUND_DEFAULT_QUEUE, *(r["queue"] for r in ROUTES)):
        await clear_queue(azurite.connection_string, queue)
    bridge = BridgeStack(bridge_host_env(emulator, azurite), tmp / "state", tmp / "devhost.log")
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()
