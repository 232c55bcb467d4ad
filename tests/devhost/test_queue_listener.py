"""devhost's queue listener in-process against Azurite: the host's fetch, prefetch, retry, poison and lease rules."""

import asyncio
import base64

import pytest
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from devhost import queues as devhost_queues
from devhost.hostconfig import QueueOptions
from devhost.invoker import Invoker
from devhost.loader import FunctionInfo
from devhost.queues import QueueListener, QueueStore


def function(name: str, queue: str, callable_) -> FunctionInfo:
    trigger = {"type": "queueTrigger", "name": "msg", "queueName": queue, "direction": "IN", "connection": "ListenerTestStorage"}
    return FunctionInfo(name=name, trigger=trigger, bindings=[trigger], callable=callable_, parameters=["msg"])


class Listening:
    """A QueueListener on ``queue`` whose storage requests are counted (Get Messages separately)."""

    def __init__(self, azurite, monkeypatch, queue: str, callable_, **options) -> None:
        monkeypatch.setenv("ListenerTestStorage", azurite.connection_string)
        self.queue = queue
        self.requests: list[tuple[str, str]] = []
        self.store = QueueStore(QueueOptions(max_polling_interval=0.3, **options))
        # The store's pooled service client, with a hook that records every request it sends.
        self.store._services[azurite.connection_string] = QueueServiceClient.from_connection_string(
            azurite.connection_string, use_env_settings=False,
            raw_request_hook=lambda request: self.requests.append(
                (request.http_request.method, request.http_request.url.split("?")[0])))
        self.listener = QueueListener(function("fn", queue, callable_), self.store, Invoker("."))
        self.client = QueueClient.from_connection_string(azurite.connection_string, queue, use_env_settings=False)
        self.task: asyncio.Task | None = None

    @property
    def get_messages(self) -> int:
        return sum(1 for method, url in self.requests if method == "GET" and url.endswith(f"/{self.queue}/messages"))

    async def send(self, *texts: str) -> None:
        try:
            await self.client.create_queue()
        except Exception:
            pass
        for text in texts:
            await self.client.send_message(base64.b64encode(text.encode()).decode())

    def start(self) -> None:
        self.task = asyncio.create_task(self.listener.run())

    async def count(self, queue: str | None = None) -> int:
        client = self.client if queue is None else self.store.client("ListenerTestStorage", queue)
        return (await client.get_queue_properties()).approximate_message_count

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.listener.stop(1)
        await self.client.close()
        await self.store.close()


async def wait_until(condition, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_prefetch_keeps_at_most_batch_size_plus_threshold_in_flight(azurite, monkeypatch):
    """The next batch is fetched once the messages in flight drop to newBatchThreshold, never earlier."""
    running, seen, gate = set(), [], asyncio.Semaphore(0)
    peak = 0

    async def fn(msg: str) -> None:
        nonlocal peak
        running.add(msg)
        peak = max(peak, len(running))
        await gate.acquire()
        running.discard(msg)
        seen.append(msg)

    q = Listening(azurite, monkeypatch, "listener-prefetch", fn, batch_size=4, new_batch_threshold=2)
    try:
        await q.send(*(f"m{i}" for i in range(14)))
        q.start()
        await wait_until(lambda: len(running) == 4)
        while len(seen) < 14:  # finish one message at a time
            before = len(seen)
            gate.release()
            await wait_until(lambda: len(seen) > before)
            if len(running) == 2 and len(seen) + len(running) < 14:  # down to newBatchThreshold: the next batch comes
                await wait_until(lambda: len(running) > 2)
        await wait_until(lambda: not q.listener.in_flight)
        assert sorted(seen) == sorted(f"m{i}" for i in range(14))
        assert peak == 4 + 2  # prefetched at the threshold, never more than batchSize + newBatchThreshold
        assert await q.count() == 0  # each deleted after its success
    finally:
        await q.close()


async def test_one_get_messages_request_per_fetch(azurite, monkeypatch):
    """A short page is the whole fetch (the SDK's pager would ask again); every fetch is one request."""
    done = []

    async def fn(msg: str) -> None:
        done.append(msg)

    q = Listening(azurite, monkeypatch, "listener-one-fetch", fn, batch_size=16)
    try:
        await q.send("a", "b", "c")
        q.start()
        await wait_until(lambda: len(done) == 3 and not q.listener.in_flight)
        assert q.get_messages == q.listener.fetches
        deletes = [url for method, url in q.requests if method == "DELETE"]
        assert len(deletes) == 3
    finally:
        await q.close()


async def test_failures_retry_with_the_dequeue_count_then_poison(azurite, monkeypatch):
    """The function sees dequeue counts 1..maxDequeueCount; then the message moves unchanged to <queue>-poison."""
    counts = []

    async def fn(msg) -> None:
        counts.append((msg.get_body(), msg.dequeue_count))
        raise RuntimeError("always fails")

    q = Listening(azurite, monkeypatch, "listener-poison", fn, max_dequeue_count=3, visibility_timeout=0)
    try:
        await q.send("bad")
        q.start()
        await wait_until(lambda: len(counts) == 3)
        await wait_until(lambda: not q.listener.in_flight)
        poison = q.store.client("ListenerTestStorage", "listener-poison-poison")
        moved = [m async for m in poison.receive_messages()]
        assert [base64.b64decode(m.content) for m in moved] == [b"bad"]
        assert counts == [(b"bad", 1), (b"bad", 2), (b"bad", 3)]
        assert await q.count() == 0
    finally:
        await q.close()


@pytest.mark.slow
async def test_a_running_message_keeps_its_lease(azurite, monkeypatch):
    """A function running longer than the lease: the listener's renewal keeps the message invisible, no second run."""
    monkeypatch.setattr(devhost_queues, "LEASE_SECONDS", 3)
    monkeypatch.setattr(devhost_queues, "RENEW_EVERY", 1)
    monkeypatch.setattr(devhost_queues, "RENEW_CHECK", 0.2)
    runs = []

    async def fn(msg: str) -> None:
        runs.append(msg)
        await asyncio.sleep(5)

    q = Listening(azurite, monkeypatch, "listener-lease", fn)
    try:
        await q.send("long")
        q.start()
        await wait_until(lambda: runs)
        await wait_until(lambda: not q.listener.in_flight)
        assert runs == ["long"]
        assert any(method == "PUT" for method, _ in q.requests)  # the lease was renewed
        assert await q.count() == 0
    finally:
        await q.close()
