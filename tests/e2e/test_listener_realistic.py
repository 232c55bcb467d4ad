"""The durable listener's promise under the real host's timing and failures, end to end.

The real app runs in a devhost subprocess with the *realistic* Durable profile in compressed time:
windows of W = 5 s with an overlap of O = 2 s (the default for 5 s: just below W/2) and the
worst-case queue polling lag on **every** dispatch, 0.33 s: host.json's 10 s scaled like Azure's
30 s overlap to 1 s, so ``overlap > 2 x polling + activity start`` holds with room to spare
(2 > 2 x 0.33 + about 0.3, as 30 > 2 x 10 + 5 in Azure). Two listener
orchestrations serve the connection (``RELAY_LISTENERS_PER_CONNECTION=2``). Injected into listener 1:

* a crash of window A **before** its W - O timer (the worker dies; ``TaskFailed``),
* a crash of window A **after** its timer, while B is already listening,
* a recycle of window B (cancelled, its work item delivered again after 2 s).

A sender posts once a second throughout, straight to the emulator as an on-premises sender would.
Asserted: no request is refused for lack of a listener, no orchestration reaches Failed, both
listeners get through at least 5 generations, every acknowledged message is stored, and every stored
message is counted in the totals, in a running window's live counts, or explained by ``lostWindows``.
The gap count and the longest sender-visible outage after each fault are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime

import aiohttp
import pytest
import pytest_asyncio

from bridge.listener import HEARTBEAT_SECONDS
from relay.protocol import MSG_NO_LISTENERS
from relay.sas import generate_sas_token, sas_resource_uri
from tests.app.conftest import ROOT_RULE, clear_queue, drain_queue

from .conftest import BridgeStack, bridge_host_env, wait_until

pytestmark = pytest.mark.slow

WINDOW = 5
POLLING = "00:00:00.33"
QUEUE = "rt-inbound"
CONTAINER = "rt-claimcheck"
GENERATIONS = 5
L1 = "relay-listener-inbound"
FAULTS = [
    {"kind": "crash", "instance": L1, "inputContains": '"windowId": "g1-a"', "after": 1.5},   # before its timer (3 s)
    {"kind": "crash", "instance": L1, "inputContains": '"windowId": "g2-a"', "after": 4.0},   # after its timer (3 s)
    {"kind": "recycle", "instance": L1, "inputContains": '"windowId": "g3-b"', "after": 1.5, "downtime": 2},
]


@pytest_asyncio.fixture(scope="module")
async def realistic(emulator, azurite, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("realistic")
    await clear_queue(azurite.connection_string, QUEUE)
    env = bridge_host_env(
        emulator, azurite,
        INBOUND_DEFAULT_QUEUE=QUEUE, INBOUND_ROUTES="[]", CLAIM_CHECK_CONTAINER=CONTAINER,
        LISTENER_WINDOW_SECONDS=str(WINDOW), RELAY_LISTENERS_PER_CONNECTION="2",
        AzureFunctionsJobHost__extensions__durableTask__storageProvider__maxQueuePollingInterval=POLLING,
        DEVHOST_DURABLE_PROFILE="realistic", DEVHOST_DURABLE_POLL_LAG="worst",
        DEVHOST_DURABLE_FAULTS=json.dumps(FAULTS))
    stack = BridgeStack(env, tmp / "state", tmp / "devhost.log")
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


async def listeners(stack, http) -> list[dict]:
    async with http.get(f"{stack.api}/listeners", headers={"x-functions-key": stack.host.master_key}) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["listeners"]


async def test_no_gap_and_no_failed_orchestration_under_lag_crashes_and_a_recycle(realistic, emulator, azurite):
    stack = realistic
    address = emulator.address("inbound")
    url = address.replace("sb://", "https://", 1)
    token = generate_sas_token(sas_resource_uri(address), ROOT_RULE, emulator.sas_key(ROOT_RULE))
    outcomes: list[tuple[float, str, str | None]] = []  # (time, outcome, message id)
    stop = asyncio.Event()

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.api}/listeners") as response:
            assert response.status == 401  # the admin route without a key: the host's 401, unchanged
        async with http.post(f"{stack.api}/listeners/start/inbound",
                             headers={"x-functions-key": stack.host.master_key}) as response:
            assert response.status in (200, 202), await response.text()
            assert (await response.json())["instanceIds"] == [L1, L1 + "@2"]
        await wait_until(lambda: _all_online(stack, http), 20, "both listeners online")

        async def send_once_a_second():
            n = 0
            while not stop.is_set():
                n += 1
                at = time.time()
                try:
                    async with http.post(f"{url}/tick/{n}", data=f"tick {n}".encode(), ssl=_ssl(emulator),
                                         headers={"ServiceBusAuthorization": token, "Content-Type": "text/plain"},
                                         timeout=aiohttp.ClientTimeout(total=30)) as response:
                        text = await response.text()
                        if response.status == 202:
                            outcomes.append((at, "ok", json.loads(text)["id"]))
                        elif MSG_NO_LISTENERS in text:
                            outcomes.append((at, "no-listener", None))
                        else:
                            outcomes.append((at, f"{response.status} {text[:80]}", None))
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    outcomes.append((at, f"error {type(exc).__name__}", None))
                await asyncio.sleep(max(0.0, at + 1.0 - time.time()))

        sender = asyncio.create_task(send_once_a_second())
        failed_seen: list[dict] = []
        try:
            async def enough_generations():
                current = await listeners(stack, http)
                failed_seen.extend(e for e in current if e["runtimeStatus"] in ("Failed", "Terminated", "Completed"))
                assert not failed_seen, failed_seen
                return all((e.get("customStatus") or {}).get("generation", 0) >= GENERATIONS for e in current)

            await wait_until(enough_generations, 90, f"{GENERATIONS} generations of both listeners", interval=0.5)
        finally:
            stop.set()
            await sender
        final = await listeners(stack, http)

    log = stack.log()
    faults = _faults(log)
    stored = [json.loads(m) for m in await drain_queue(azurite.connection_string, QUEUE,
                                                        expect=sum(1 for o in outcomes if o[1] == "ok"), timeout=15)]

    # What the sender saw
    gaps = [o for o in outcomes if o[1] == "no-listener"]
    others = [o for o in outcomes if o[1] not in ("ok", "no-listener")]
    report = {"requests": len(outcomes), "acknowledged": sum(1 for o in outcomes if o[1] == "ok"),
              "gaps (no listener)": len(gaps), "other failures": [o[1] for o in others],
              "faults": [{"fault": f["kind"] + " " + f["window"], "longest outage s": _outage(outcomes, f["at"], WINDOW)}
                         for f in faults]}
    print("\nrealistic listener run:", json.dumps(report, indent=1))
    assert len(faults) == 3, log[-3000:]  # every injected fault happened
    assert gaps == [], report
    assert not any(e["runtimeStatus"] == "Failed" for e in final) and not failed_seen
    assert all(e["runtimeStatus"] == "Running" for e in final), final

    # Every acknowledged message is stored, once
    acked = {o[2] for o in outcomes if o[1] == "ok"}
    assert acked <= {m["id"] for m in stored} and len(stored) == len({m["id"] for m in stored})

    # Every stored message is counted: totals + live counts of running windows, or explained by lostWindows
    totals = [e["customStatus"]["counts"] for e in final]
    counted = sum(t["stored"] for t in totals) + sum(e["live"]["counts"]["stored"] for e in final)
    lost = sum(t["lostWindows"] for t in totals)
    assert totals[0]["failedWindows"] >= 2 and lost >= 2, totals  # the two crashes at least (a recycle may add one)
    assert totals[1]["failedWindows"] == 0, totals  # listener 2 was left alone
    assert counted <= len(stored), (counted, len(stored), totals)  # nothing counted twice
    # What is not counted arrived in a lost window (at most W seconds of a message a second each), or after
    # the last heartbeat of a running window (live counts are at most one heartbeat old).
    assert len(stored) - counted <= WINDOW * lost + 2 * HEARTBEAT_SECONDS, (counted, len(stored), totals)
    print(f"stored {len(stored)}, counted {counted}, in lost windows at most {len(stored) - counted} (lostWindows {lost})")


def _ssl(emulator):
    import ssl
    return ssl.create_default_context(cafile=emulator.ca_cert)


async def _all_online(stack, http) -> bool:
    current = await listeners(stack, http)
    return len(current) == 2 and all(e["online"] for e in current)


_FAULT = re.compile(r"durable fault: (\w[\w-]*) of activity listener_window \(instance (\S+), task \d+, input (.*?)\) at (\S+) after")


def _faults(log: str) -> list[dict]:
    found = []
    for kind, _instance, inp, stamp in _FAULT.findall(log):
        window = re.search(r'"windowId": "([^"]+)"', inp)
        found.append({"kind": kind, "window": window.group(1) if window else "?",
                      "at": datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()})
    return found


def _outage(outcomes, since: float, horizon: float) -> float:
    """Longest run of failed requests in [since, since + horizon]: first failure to the next success (s)."""
    longest, start = 0.0, None
    for at, outcome, _ in outcomes:
        if at < since - 1 or at > since + horizon:
            continue
        if outcome != "ok":
            start = at if start is None else start
        elif start is not None:
            longest, start = max(longest, at - start), None
    return round(longest, 1)
