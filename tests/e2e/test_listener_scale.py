"""Scaling RELAY_LISTENERS_PER_CONNECTION up and down loses nothing (the real app through devhost).

In Azure, changing an app setting restarts the app; here the devhost subprocess is restarted with the new value
and the same state dir (durable SQLite survives; running windows are delivered again on start, at least once).
A sender keeps posting throughout and retries what a sender retries (no listener while the host restarts, 503
from a closing window). Asserted: each step shows K listeners online, the listeners above K are terminated with
the scale-down reason while listener 1 keeps its instance, and every acknowledged message is stored once.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import aiohttp
import pytest
import pytest_asyncio

from bridge import supervisor
from relay.sas import generate_sas_token, sas_resource_uri
from tests.app.conftest import ROOT_RULE, clear_queue, drain_queue

from .conftest import BridgeStack, bridge_host_env, wait_until

pytestmark = pytest.mark.slow

QUEUE = "scale-inbound"
L1 = "relay-listener-inbound"


@pytest_asyncio.fixture(scope="module")
async def scaled(emulator, azurite, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    await clear_queue(azurite.connection_string, QUEUE)
    stack = BridgeStack(bridge_host_env(emulator, azurite, INBOUND_DEFAULT_QUEUE=QUEUE, INBOUND_ROUTES="[]",
                                        CLAIM_CHECK_CONTAINER="scale-claimcheck", LISTENER_WINDOW_SECONDS="8"),
                        tmp / "state", tmp / "devhost.log")
    yield stack
    await stack.stop()


async def _listeners(stack, http) -> list[dict]:
    async with http.get(f"{stack.api}/listeners", headers={"x-functions-key": stack.host.master_key}) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["listeners"]


async def _restart_with(stack, http, k: int) -> dict:
    await stack.stop()
    stack.env["RELAY_LISTENERS_PER_CONNECTION"] = str(k)
    await stack.start()
    async with http.post(f"{stack.api}/listeners/start/inbound", headers={"x-functions-key": stack.host.master_key}) as r:
        assert r.status in (200, 202), await r.text()
        body = await r.json()
    assert body["instanceIds"] == [supervisor.instance_id("inbound", n) for n in range(1, k + 1)]

    async def all_online():
        current = await _listeners(stack, http)
        return current if len(current) == k and all(e["online"] for e in current) else None
    return {"listeners": await wait_until(all_online, 30, f"{k} listeners online"), "start": body}


async def test_scaling_listeners_up_and_down_loses_nothing(scaled, emulator, azurite):
    stack = scaled
    address = emulator.address("inbound")
    url = address.replace("sb://", "https://", 1)
    token = generate_sas_token(sas_resource_uri(address), ROOT_RULE, emulator.sas_key(ROOT_RULE))
    context = ssl.create_default_context(cafile=emulator.ca_cert)
    acked: list[str] = []
    stop = asyncio.Event()

    async with aiohttp.ClientSession() as http:
        async def sender():
            n = 0
            while not stop.is_set():
                n += 1
                deadline = time.monotonic() + 60
                while True:  # until acknowledged: a sender retries 502/503
                    try:
                        async with http.post(f"{url}/m/{n}", data=f"m {n}".encode(), ssl=context,
                                             headers={"ServiceBusAuthorization": token}) as response:
                            if response.status == 202:
                                acked.append((await response.json())["id"])
                                break
                            assert response.status in (502, 503), (response.status, await response.text())
                    except aiohttp.ClientError:
                        pass
                    assert time.monotonic() < deadline, f"message {n} never acknowledged"
                    await asyncio.sleep(0.2)
                await asyncio.sleep(0.25)

        await stack.start()
        first = await _restart_with(stack, http, 3)
        created = {e["instanceId"]: e["createdTime"] for e in first["listeners"]}
        task = asyncio.create_task(sender())
        try:
            await wait_until(lambda: len(acked) >= 5, 20, "messages through three listeners")
            down = await _restart_with(stack, http, 1)  # scale in: listeners 2 and 3 are terminated
            assert down["listeners"][0]["createdTime"] == created[L1]  # listener 1 kept its instance
            count = len(acked)
            await wait_until(lambda: len(acked) >= count + 5, 20, "messages through one listener")
            up = await _restart_with(stack, http, 2)  # scale out again: listener 2 starts afresh
            assert [e["instanceId"] for e in up["listeners"]] == [L1, L1 + "@2"]
            count = len(acked)
            await wait_until(lambda: len(acked) >= count + 5, 20, "messages through two listeners")
        finally:
            stop.set()
            await task

        async with http.get(f"{stack.host.info['durable']}/instances/{L1}@3") as response:
            third = await response.json()
        assert third["runtimeStatus"] == "Terminated" and supervisor.SCALE_DOWN_REASON in json.dumps(third["output"])

    stored = [json.loads(m) for m in await drain_queue(azurite.connection_string, QUEUE, expect=len(acked), timeout=15)]
    ids = [m["id"] for m in stored]
    assert set(acked) <= set(ids) and len(ids) == len(set(ids)), (len(acked), len(ids))
    print(f"\nscale 3 -> 1 -> 2: {len(acked)} messages acknowledged, {len(ids)} stored")
