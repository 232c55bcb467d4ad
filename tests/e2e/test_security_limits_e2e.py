"""Issue 11 row 4 through the real app: a flood at the durable listener stays bounded.

The app runs in devhost (subprocess) with its durable listener on ``inbound``. The flood, bounded
in count and time and on loopback only: 4 concurrent 60 MiB POSTs and 1,000 idle WebSocket
senders. Asserted are outcomes only: every big POST gets 413 and nothing of it is stored; every
WebSocket sender is either refused at accept (503) or served and then closed for idleness (1001)
or by a window's end (1000). The host's resident memory is sampled from /proc and printed (the
figures go into the issue's closing note; no timing or memory assertion).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import pytest_asyncio

from relay.client import HybridConnectionClient
from relay.errors import ConnectionLostError, NoListenerError, RejectedError
from tests.app.conftest import clear_queue, drain_queue, root_credential

from .conftest import BridgeStack, bridge_host_env

pytestmark = pytest.mark.slow

QUEUE = "e2e-limits-in"
MAX_STREAMS = 50
IDLE_SECONDS = 3
BIG = 60 * 1024 * 1024
SENDERS = 1000


@pytest_asyncio.fixture(scope="module")
async def limited(emulator, azurite, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-limits")
    await clear_queue(azurite.connection_string, QUEUE)
    env = bridge_host_env(emulator, azurite, INBOUND_ROUTES="[]", INBOUND_DEFAULT_QUEUE=QUEUE, LISTENER_WINDOW_SECONDS="120",
                          INBOUND_MAX_WS_STREAMS=str(MAX_STREAMS), INBOUND_WS_IDLE_SECONDS=str(IDLE_SECONDS))
    stack = BridgeStack(env, tmp / "state", tmp / "devhost.log")
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """The host's RSS every 0.2 s while the flood runs (peak and samples)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.task = pid, 0.0, None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib(self.pid))
            await asyncio.sleep(0.2)

    def __enter__(self):
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc):
        self.task.cancel()


async def test_a_flood_gets_413_503_and_idle_closes_with_bounded_memory(limited, emulator, azurite, http):
    async with http.post(f"{limited.api}/listeners/start/inbound", headers={"x-functions-key": limited.host.master_key}) as response:
        assert response.status in (200, 202), await response.text()
    client = HybridConnectionClient(emulator.address("inbound"), root_credential(emulator), connection_verify=emulator.ca_cert,
                                    max_connections=0)
    pid = limited.host.process.pid
    async with client:
        deadline = time.monotonic() + 60
        while True:  # the first window comes online
            try:
                async with await client.request("POST", "/hello", body=b"hi") as response:
                    assert response.status == 202, await response.text()
                    break
            except NoListenerError:
                assert time.monotonic() < deadline, "the durable listener never came online"
                await asyncio.sleep(0.2)
        baseline = rss_mib(pid)

        big = b"x" * BIG

        async def post_big(i: int) -> int:
            async with await client.request("POST", f"/big/{i}", body=big, timeout=120) as response:
                await response.read()
                return response.status

        with Sampler(pid) as posts:
            statuses = await asyncio.wait_for(asyncio.gather(*(post_big(i) for i in range(4))), 300)
        assert statuses == [413] * 4
        after_posts = rss_mib(pid)

        outcomes: dict[str, int] = {}
        gate = asyncio.Semaphore(100)  # at most 100 handshakes at a time: bounded, and the flood still piles up

        async def idle_sender(i: int) -> None:
            async with gate:
                try:
                    stream = await client.connect(path=f"/idle/{i}", timeout=60)
                except RejectedError as exc:
                    outcomes[f"refused {exc.status}"] = outcomes.get(f"refused {exc.status}", 0) + 1
                    return
            try:
                message = await asyncio.wait_for(stream.receive(), 150)
                key = f"closed {stream.close_code}" if message is None else "message?"
            except ConnectionLostError:
                key = f"lost {stream.close_code}"
            outcomes[key] = outcomes.get(key, 0) + 1
            await stream.close()

        with Sampler(pid) as streams:
            await asyncio.wait_for(asyncio.gather(*(idle_sender(i) for i in range(SENDERS))), 400)
        after_streams = rss_mib(pid)

    print(f"\nhost RSS MiB: baseline {baseline:.0f}, peak during 4x60 MiB POSTs {posts.peak:.0f}, after {after_posts:.0f}, "
          f"peak during {SENDERS} idle WebSocket senders {streams.peak:.0f}, after {after_streams:.0f}; outcomes {outcomes}")
    assert sum(outcomes.values()) == SENDERS
    served = sum(n for k, n in outcomes.items() if k.startswith("closed"))
    assert set(outcomes) <= {"refused 503", "closed 1001", "closed 1000"}, outcomes  # never served beyond the limit
    assert outcomes.get("refused 503", 0) > 0 and served > 0
    stored = [json.loads(m) for m in await drain_queue(azurite.connection_string, QUEUE, expect=5, timeout=3)]
    assert [m["path"] for m in stored] == ["/hello"]  # nothing of the big bodies, and idle senders sent nothing
