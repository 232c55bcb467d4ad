"""BridgeStorage resolution and the per-process caches (no network needed)."""

from __future__ import annotations

import bridge
from bridge import credentials, storage
from bridge.settings import get_settings

CLIENT_ID = "00000000-0000-0000-0000-0000000000aa"


async def test_identity_based_storage_uses_the_shared_managed_identity(bridge_env, monkeypatch):
    monkeypatch.delenv("BridgeStorage")
    bridge_env(BridgeStorage="", BridgeStorage__queueServiceUri="https://acct.queue.core.windows.net",
               BridgeStorage__blobServiceUri="https://acct.blob.core.windows.net",
               BridgeStorage__credential="managedidentity", BridgeStorage__clientId=CLIENT_ID)
    assert get_settings().storage.uses_identity
    queues, blobs = storage.queue_service(), storage.blob_service()
    assert queues.url.startswith("https://acct.queue.core.windows.net") and blobs.url.startswith("https://acct.blob.core.windows.net")
    assert queues.credential is blobs.credential is credentials.get_credential(CLIENT_ID)  # one credential per identity
    assert storage.queue_service() is queues  # cached per process
    await bridge.reset_caches()
    assert storage._queue_service is None and credentials._credentials == {}


async def test_queue_clients_encode_base64_like_the_trigger_expects(bridge_env):
    from azure.storage.queue import TextBase64EncodePolicy

    client = await storage.queue("app-encoding-check")
    assert isinstance(client._message_encode_policy, TextBase64EncodePolicy)
    assert await storage.queue("app-encoding-check") is client


async def test_the_relay_credential_is_one_object_per_identity(bridge_env):
    assert credentials.get_credential(None) is credentials.get_credential(None)
    assert credentials.get_credential(CLIENT_ID) is not credentials.get_credential(None)


def test_client_request_ids_are_unique_per_call_without_uuid1():
    from bridge import storage

    ids = {storage.client_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("bridge-") for i in ids)
