"""Storage queue triggers and outputs against Azurite, with the host's queue semantics.

Per queue-triggered function one :class:`QueueListener` polls its queue (host.json
``extensions.queues``): up to ``batchSize`` messages per fetch, a new fetch once the in-flight
count drops to ``newBatchThreshold``, randomized exponential back-off up to
``maxPollingInterval`` while the queue is empty, base64 decoding (``messageEncoding``).
A message is deleted only after the function succeeded; a failure makes it visible again
after ``visibilityTimeout``; after ``maxDequeueCount`` failed attempts it moves, unchanged, to
``<queue>-poison``. Messages stay invisible while a function runs (the lease is renewed), so a
crash of devhost only delays them.

Per fetch exactly one Get Messages request (the host's ``GetMessagesAsync(batchSize)``); the
SDK's pager would otherwise ask again whenever a page came back short. All storage calls go
through one pooled client per connection, with a counter-based client request id (the SDK's
default ``uuid1()`` costs a system call per request). One renewal task per listener keeps the
leases of every running message, instead of a task per message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import itertools
import random
import uuid
from typing import Any

import azure.functions as func
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from .hostconfig import QueueOptions
from .invoker import Invoker, describe_exception
from .loader import FunctionInfo

log = logging.getLogger("devhost.queues")

LEASE_SECONDS = 600  # how long a fetched message stays invisible while its function runs
RENEW_EVERY = 240  # a running message's lease is renewed once it is this old (seconds)
RENEW_CHECK = 30  # how often the listener's renewal task looks for such leases
MIN_POLL = 0.1


class ConnectionError_(RuntimeError):
    """A binding's connection setting cannot be resolved to a storage account."""


def resolve_connection(name: str | None, environ=os.environ) -> str:
    """The storage connection string for a binding's ``connection`` (empty -> AzureWebJobsStorage)."""
    name = name or "AzureWebJobsStorage"
    for candidate in (name, f"AzureWebJobs{name}"):
        value = environ.get(candidate)
        if value:
            return value
    if any(k.startswith(f"{name}__") for k in environ):
        raise ConnectionError_(
            f"connection {name!r} is identity-based ({name}__queueServiceUri...); devhost needs a "
            f"connection string in the {name} setting (e.g. UseDevelopmentStorage=true)")
    raise ConnectionError_(f"connection setting {name!r} is not defined (local.settings.json Values or env)")


def encode_message(value: Any, encoding: str) -> list[str]:
    """Queue output binding value(s) -> message texts as the host writes them."""
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in encode_message(item, encoding)]
    if isinstance(value, func.QueueMessage):
        raw = value.get_body()
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
    else:  # the host serializes POCOs as JSON
        raw = json.dumps(value).encode("utf-8")
    if encoding == "base64":
        return [base64.b64encode(raw).decode("ascii")]
    return [raw.decode("utf-8")]


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def proxy_configured(environ=os.environ) -> bool:
    """Whether a proxy variable is set (any case), so the storage SDK should read the environment.

    Without one, ``use_env_settings=False``: azure-core's aiohttp session otherwise runs with
    ``trust_env=True`` and aiohttp looks up the proxy and parses ``~/.netrc`` in a worker thread on
    every queue operation, a thread hop per receive, update and delete that the host's own
    (.NET) queue listener does not pay. Semantics are unchanged: same requests, same order.
    """
    return any(name.lower() in PROXY_VARIABLES and value for name, value in environ.items())


def decode_message(text: str, encoding: str) -> bytes:
    if encoding == "base64":
        return base64.b64decode(text.encode("ascii"), validate=True)
    return text.encode("utf-8")


class QueueStore:
    """Queue clients per (connection, queue); creates queues on first use; wakes local listeners."""

    def __init__(self, options: QueueOptions) -> None:
        self.options = options
        self._services: dict[str, QueueServiceClient] = {}
        self._ready: set[tuple[str, str]] = set()
        self._listeners: dict[tuple[str, str], list["QueueListener"]] = {}

    def client(self, connection: str | None, queue: str) -> QueueClient:
        conn = resolve_connection(connection)
        service = self._services.get(conn)
        if service is None:
            service = self._services[conn] = QueueServiceClient.from_connection_string(
                conn, use_env_settings=proxy_configured())
        return service.get_queue_client(queue)

    async def ensure(self, connection: str | None, queue: str) -> QueueClient:
        client = self.client(connection, queue)
        key = (resolve_connection(connection), queue)
        if key not in self._ready:
            try:
                await client.create_queue()
            except ResourceExistsError:
                pass
            self._ready.add(key)
        return client

    def register(self, listener: "QueueListener") -> None:
        key = (resolve_connection(listener.connection), listener.queue)
        self._listeners.setdefault(key, []).append(listener)

    async def send(self, connection: str | None, queue: str, value: Any) -> None:
        client = await self.ensure(connection, queue)
        for text in encode_message(value, self.options.message_encoding):
            await client.send_message(text)
        for listener in self._listeners.get((resolve_connection(connection), queue), []):
            listener.wake()

    async def output_handler(self, binding: dict, value: Any) -> None:
        """Invoker hook for ``queue`` output bindings."""
        await self.send(binding.get("connection"), binding["queueName"], value)

    async def close(self) -> None:
        for service in self._services.values():
            await service.close()


class QueueListener:
    """Polls one queue for one queue-triggered function."""

    def __init__(self, info: FunctionInfo, store: QueueStore, invoker: Invoker) -> None:
        self.info = info
        self.requests = 0
        """Storage requests this listener made (fetches, deletes, lease updates, poison moves)."""
        self.fetches = 0
        """Get Messages requests (one per fetch)."""
        self._ids = itertools.count(1)
        self._id_prefix = f"devhost-{uuid.uuid4().hex[:12]}-"
        self._leases: dict[str, dict] = {}  # message id -> lease of a running message
        self.store = store
        self.invoker = invoker
        self.options = store.options
        self.queue = info.trigger["queueName"]
        self.connection = info.trigger.get("connection")
        self.arg = info.trigger["name"]
        self._wake = asyncio.Event()
        self.in_flight: set[asyncio.Task] = set()
        annotation = getattr(info.callable, "__annotations__", {}).get(self.arg)
        self._as = annotation if annotation in (str, bytes) else None

    def wake(self) -> None:
        self._wake.set()

    def _request_id(self) -> str:
        """A unique ``x-ms-client-request-id`` (the storage logs show it) without ``uuid1()``'s system call."""
        self.requests += 1
        return f"{self._id_prefix}{next(self._ids)}"

    async def _fetch(self, client: QueueClient, count: int) -> list:
        """One Get Messages request for up to ``count`` messages, leased for ``LEASE_SECONDS``."""
        self.fetches += 1
        pages = client.receive_messages(messages_per_page=count, max_messages=count, visibility_timeout=LEASE_SECONDS,
                                        client_request_id=self._request_id()).by_page()
        async for page in pages:
            return [message async for message in page]
        return []

    async def _connect(self) -> QueueClient:
        """Create the queue and its poison queue; keep retrying while storage is unreachable."""
        delay = 1.0
        while True:
            try:
                client = await self.store.ensure(self.connection, self.queue)
                self.poison = await self.store.ensure(self.connection, f"{self.queue}-poison")
                return client
            except ConnectionError_:
                raise
            except Exception as exc:
                log.warning("queue %s (function %s): storage not reachable (%s); retrying in %.0f s",
                            self.queue, self.info.name, describe_exception(exc).splitlines()[0], delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def run(self) -> None:
        try:
            client = await self._connect()
        except ConnectionError_ as exc:
            log.error("function %s will not run: %s", self.info.name, exc)
            return
        renewer = asyncio.create_task(self._renew_leases(client))
        try:
            await self._poll(client)
        finally:
            renewer.cancel()

    async def _poll(self, client: QueueClient) -> None:
        opts = self.options
        in_flight = self.in_flight
        delay = MIN_POLL
        while True:
            # The host fetches the next batch once the messages in flight drop to newBatchThreshold,
            # so at most batchSize + newBatchThreshold run at once.
            if len(in_flight) > opts.threshold:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                messages = await self._fetch(client, opts.batch_size)
            except Exception as exc:  # Azurite restarting etc.: back off, keep going
                log.warning("queue %s: receive failed: %s", self.queue, describe_exception(exc))
                messages = []
            if messages:
                delay = MIN_POLL
                for message in messages:
                    task = asyncio.create_task(self._process(client, message))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay * random.uniform(0.8, 1.0))
                delay = MIN_POLL
            except asyncio.TimeoutError:
                delay = min(delay * 2, opts.max_polling_interval)

    async def _process(self, client: QueueClient, message) -> None:
        opts = self.options
        lease = {"pop_receipt": message.pop_receipt, "renew_at": asyncio.get_running_loop().time() + RENEW_EVERY,
                 "renewing": None}
        if message.dequeue_count > opts.max_dequeue_count:  # exceeded while devhost was down
            await self._to_poison(client, message, lease)
            return
        self._leases[message.id] = lease
        ok = False
        try:
            body = decode_message(message.content or "", opts.message_encoding)
            arg = self._bind(message, body)
            await self.invoker.call(self.info, {self.arg: arg})
            ok = True
        except (binascii.Error, ValueError) as exc:
            log.error("function %s: message %s could not be decoded (%s, messageEncoding=%s)",
                      self.info.name, message.id, exc, opts.message_encoding)
        except Exception as exc:
            log.error("function %s failed for message %s (dequeue count %s): %s",
                      self.info.name, message.id, message.dequeue_count, describe_exception(exc))
        except asyncio.CancelledError:  # devhost stops: hand the message back at once
            self._leases.pop(message.id, None)
            try:
                await asyncio.shield(self._settled(client, message, lease, visibility_timeout=0))
            except Exception:
                pass  # it reappears when the lease expires
            raise
        finally:
            self._leases.pop(message.id, None)
        try:
            if ok:
                await self._settled(client, message, lease)
                log.debug("function %s processed message %s", self.info.name, message.id)
            elif message.dequeue_count >= opts.max_dequeue_count:
                await self._to_poison(client, message, lease)
            else:
                await self._settled(client, message, lease, visibility_timeout=int(opts.visibility_timeout))
        except ResourceNotFoundError:
            log.warning("queue %s: message %s vanished (lease lost?)", self.queue, message.id)

    async def _settled(self, client: QueueClient, message, lease: dict, visibility_timeout: int | None = None) -> None:
        """Delete the message (``visibility_timeout`` None) or make it visible again after that many seconds.

        Waits for a lease renewal that is under way first: it changes the pop receipt.
        """
        if lease["renewing"] is not None:
            try:
                await asyncio.shield(lease["renewing"])
            except Exception:
                pass  # the old receipt is all there is; a refusal says why
        if visibility_timeout is None:
            await client.delete_message(message.id, lease["pop_receipt"], client_request_id=self._request_id())
        else:
            await client.update_message(message.id, lease["pop_receipt"], visibility_timeout=visibility_timeout,
                                        client_request_id=self._request_id())

    async def stop(self, grace: float) -> None:
        """Let running invocations finish for ``grace`` seconds, then cancel and release the rest."""
        if self.in_flight:
            await asyncio.wait(set(self.in_flight), timeout=grace)
        for task in list(self.in_flight):
            task.cancel()
        await asyncio.gather(*self.in_flight, return_exceptions=True)

    def _bind(self, message, body: bytes):
        if self._as is bytes:
            return body
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if self._as is str:
            if text is None:
                raise ValueError("message body is not UTF-8 text")
            return text
        return QueueMessage(
            id=message.id, body=text if text is not None else body,
            dequeue_count=message.dequeue_count, expiration_time=message.expires_on,
            insertion_time=message.inserted_on, time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt)

    async def _renew_leases(self, client: QueueClient) -> None:
        """Every ``RENEW_CHECK`` s, extend the lease of each running message older than ``RENEW_EVERY`` s."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RENEW_CHECK)
            now = loop.time()
            for message_id, lease in list(self._leases.items()):
                if lease["renew_at"] <= now and self._leases.get(message_id) is lease:
                    lease["renewing"] = loop.create_task(self._renew(client, message_id, lease))
                    try:
                        await asyncio.shield(lease["renewing"])
                    except Exception as exc:  # the function keeps running; the message may reappear
                        log.warning("queue %s: lease of message %s not renewed: %s",
                                    self.queue, message_id, describe_exception(exc))
                    finally:
                        lease["renewing"] = None

    async def _renew(self, client: QueueClient, message_id: str, lease: dict) -> None:
        receipt = await client.update_message(message_id, lease["pop_receipt"], visibility_timeout=LEASE_SECONDS,
                                              client_request_id=self._request_id())
        lease["pop_receipt"] = receipt.pop_receipt
        lease["renew_at"] = asyncio.get_running_loop().time() + RENEW_EVERY

    async def _to_poison(self, client: QueueClient, message, lease: dict) -> None:
        await self.poison.send_message(message.content, client_request_id=self._request_id())
        await self._settled(client, message, lease)
        log.warning("function %s: message %s moved to %s-poison after %s attempts",
                    self.info.name, message.id, self.queue, message.dequeue_count)
