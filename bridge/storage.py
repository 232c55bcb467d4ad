"""The app's own storage (``BridgeStorage``): queue and blob clients, cached per process.

``BridgeStorage`` is resolved the way the Functions host resolves a trigger connection:
a connection string (Azurite locally: ``UseDevelopmentStorage=true`` or a full string), or the
identity-based group ``BridgeStorage__queueServiceUri`` / ``__blobServiceUri`` with the
managed identity (``__credential=managedidentity`` + ``__clientId`` for a user-assigned one).

Queue clients encode messages in base64 (``TextBase64EncodePolicy``), which is what the
queue trigger expects with host.json ``messageEncoding: base64``. Queues and containers the
app writes to are created on first use (once per process).
"""

from __future__ import annotations

import itertools
import os
import uuid
from typing import TYPE_CHECKING, Mapping

from azure.core.exceptions import ResourceExistsError

from .credentials import get_credential
from .settings import get_settings

if TYPE_CHECKING:
    from azure.storage.blob.aio import BlobServiceClient, ContainerClient
    from azure.storage.queue.aio import QueueClient, QueueServiceClient

# The storage SDKs are imported on first use, not with the app: importing both takes about a
# third of the app's import time, and the cold path (relay_send) never touches storage.

RETRY_TOTAL = 3
"""Storage retries: 3, about 1, 3 and 5 s apart (the SDK default, 15-24 s apart, would outlast Relay's 60 s
deadline for the HTTP sender waiting for its 202)."""


_request_ids = itertools.count(1)
_REQUEST_ID_PREFIX = f"bridge-{uuid.uuid4().hex[:12]}-"


def client_request_id() -> str:
    """A unique ``x-ms-client-request-id`` for one storage call (storage logs show it).

    The SDK's default is ``str(uuid.uuid1())`` per request, a system call (about 40-70 µs on the
    bench machine, a few % of a queue write); a per-process random prefix and a counter are as
    unique and as traceable.
    """
    return f"{_REQUEST_ID_PREFIX}{next(_request_ids)}"


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy")
"""The variables aiohttp reads under ``trust_env`` (any case); ``no_proxy`` only matters with one of them."""


def use_env_settings(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the storage SDK should read proxy settings from the environment: only when one is set.

    azure-core's aiohttp transport opens its session with ``trust_env=use_env_settings`` (default
    True). aiohttp then resolves the proxy and reads ``~/.netrc`` in a worker thread on *every*
    request: a thread hop per queue operation, about a quarter of the app's CPU per queued
    message. With no proxy variable set there is nothing to find, so it is turned off; a
    proxy-configured environment keeps the SDK's behaviour unchanged. Storage authenticates with
    its own headers (key or token), never ``.netrc``.
    """
    return any(name.lower() in PROXY_VARIABLES and value for name, value in environ.items())


def client_options() -> dict:
    """The storage clients' options (retries, timeouts, proxy lookup): the app's, and the bench's yardsticks."""
    return {"retry_total": RETRY_TOTAL, "initial_backoff": 1, "increment_base": 2, "connection_timeout": 10,
            "use_env_settings": use_env_settings()}


_queue_service: QueueServiceClient | None = None
_blob_service: BlobServiceClient | None = None
_queues: dict[str, QueueClient] = {}
_containers: dict[str, ContainerClient] = {}
_ensured: set[str] = set()


def queue_service() -> QueueServiceClient:
    """The process-wide queue service client for ``BridgeStorage``."""
    global _queue_service
    if _queue_service is None:
        from azure.storage.queue.aio import QueueServiceClient

        storage = get_settings().storage
        if storage.uses_identity:
            _queue_service = QueueServiceClient(storage.queue_service_uri, credential=get_credential(storage.client_id), **client_options())
        else:
            _queue_service = QueueServiceClient.from_connection_string(storage.connection_string, **client_options())
    return _queue_service


def blob_service() -> BlobServiceClient:
    """The process-wide blob service client for ``BridgeStorage``."""
    global _blob_service
    if _blob_service is None:
        from azure.storage.blob.aio import BlobServiceClient

        storage = get_settings().storage
        if storage.uses_identity:
            _blob_service = BlobServiceClient(storage.blob_service_uri, credential=get_credential(storage.client_id), **client_options())
        else:
            _blob_service = BlobServiceClient.from_connection_string(storage.connection_string, **client_options())
    return _blob_service


async def queue(name: str) -> QueueClient:
    """A base64-encoding client for queue ``name``, created in storage on first use."""
    client = _queues.get(name)
    if client is None:
        from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy

        # get_queue_client does not inherit the service client's encode policy: pass it here.
        client = _queues[name] = queue_service().get_queue_client(
            name, message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy()
        )
    key = f"queue:{name}"
    if key not in _ensured:
        try:
            await client.create_queue()
        except ResourceExistsError:
            pass
        _ensured.add(key)
    return client


async def container(name: str) -> ContainerClient:
    """A client for blob container ``name``, created in storage on first use."""
    client = _containers.get(name)
    if client is None:
        client = _containers[name] = blob_service().get_container_client(name)
    key = f"container:{name}"
    if key not in _ensured:
        try:
            await client.create_container()
        except ResourceExistsError:
            pass
        _ensured.add(key)
    return client


async def close_clients() -> None:
    """Close and forget every cached storage client."""
    global _queue_service, _blob_service
    clients = [*_queues.values(), *_containers.values(), _queue_service, _blob_service]
    _queues.clear()
    _containers.clear()
    _ensured.clear()
    _queue_service = _blob_service = None
    for client in clients:
        if client is not None:
            await client.close()
