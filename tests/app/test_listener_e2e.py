"""End to end: senders → the emulator → the listener activity → Azurite queues (and blobs), bytes identical.

The listener activity runs for real (relay library listener, managed-identity token from the
emulator, azure-storage aio clients on Azurite). Senders are the relay library's client with the
namespace SAS key and a plain aiohttp POST to the emulator's HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import aiohttp
import pytest
from azure.storage.blob.aio import BlobServiceClient

from bridge import fanin, listener, storage
from bridge.settings import get_settings
from relay.client import HybridConnectionClient
from relay.errors import NoListenerError
from relay.sas import generate_sas_token, sas_resource_uri
from tests.fixtures.emulator import identity

from .conftest import ROOT_RULE, clear_queue, drain_queue, root_credential

WINDOW = 4.0


def sender(emulator, entity="inbound") -> HybridConnectionClient:
    return HybridConnectionClient(emulator.address(entity), root_credential(emulator), connection_verify=emulator.ca_cert)


async def request_when_online(client: HybridConnectionClient, *args, **kwargs):
    for _ in range(100):
        try:
            return await client.request(*args, **kwargs)
        except NoListenerError:
            await asyncio.sleep(0.05)
    raise AssertionError("the listener window never came online")


@pytest.fixture
async def queues(azurite, bridge_env):
    names = ("app-inbound", "app-orders-in", "app-eu-in")
    for name in names:
        await clear_queue(azurite.connection_string, name)

    async def read(name: str, expect: int = 1) -> list[dict]:
        return [json.loads(m) for m in await drain_queue(azurite.connection_string, name, expect=expect)]

    return read


async def test_http_and_websocket_messages_are_stored_byte_identical(emulator, azurite, bridge_env, queues, app_functions):
    activity = app_functions["listener_window"].get_user_function()  # the registered activity itself
    window = asyncio.create_task(activity({"connection": "inbound", "seconds": WINDOW, "windowId": "w1", "report": False}))
    binary = os.urandom(3000)
    async with sender(emulator) as client:
        resp = await request_when_online(client, "POST", "/orders/7?x=1", body=binary,
                                         headers={"Content-Type": "application/octet-stream", "X-Trace": "t1"})
        assert resp.status == 202
        ack = await resp.json()
        assert ack["queue"] == "app-orders-in" and resp.headers["X-Relay-Message-Id"] == ack["id"]
        resp = await client.request("POST", "/misc", body="grüße".encode(), headers={"X-Route": "eu"})
        assert resp.status == 202 and (await resp.json())["queue"] == "app-eu-in"
        stream = await client.connect(path="/chat")
        async with stream:
            await stream.send("ws text")
            await stream.send(b"\x00\x01ws-binary")
            await asyncio.sleep(0.3)
    counts = await window
    assert counts["ok"] and counts["online"] and counts["windowId"] == "w1"
    assert (counts["httpRequests"], counts["wsStreams"], counts["wsMessages"], counts["stored"]) == (2, 1, 2, 4)
    assert counts["queues"] == {"app-orders-in": 1, "app-eu-in": 1, "app-inbound": 2}

    [orders] = await queues("app-orders-in")
    assert fanin.decode_body(orders) == binary
    assert (orders["kind"], orders["connection"], orders["method"], orders["path"], orders["query"]) == (
        "http", "inbound", "POST", "/orders/7", "x=1")
    assert orders["headers"]["X-Trace"] == "t1" and "ServiceBusAuthorization" not in orders["headers"]
    assert orders["receivedAt"].endswith("Z") and orders["id"] == ack["id"]
    [eu] = await queues("app-eu-in")
    assert eu["body"] == "grüße"
    ws = await queues("app-inbound", expect=2)
    assert [fanin.decode_body(m) for m in ws] == [b"ws text", b"\x00\x01ws-binary"]
    assert all(m["kind"] == "websocket" and m["path"] == "/chat" for m in ws)
    assert not any(k.lower().startswith("sec-websocket") for k in ws[0]["headers"])


async def test_a_100_kb_payload_goes_through_the_claim_check(emulator, azurite, bridge_env, queues):
    settings = get_settings()
    payload = os.urandom(100 * 1024)
    window = asyncio.create_task(listener.run_window(settings, "inbound", WINDOW))
    # A plain HTTPS POST with a SAS token, as any sender on any platform would do it.
    token = generate_sas_token(sas_resource_uri(emulator.address("inbound")), ROOT_RULE, emulator.sas_key(ROOT_RULE))
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.post(f"{emulator.http}/inbound/big", data=payload, ssl=emulator.ssl_context(),
                                    headers={"ServiceBusAuthorization": token, "Content-Type": "application/octet-stream"}) as resp:
                if resp.status != 502:
                    break
            await asyncio.sleep(0.05)
        assert resp.status == 202
    counts = await window
    assert counts.claimChecked == 1
    [ref] = await queues("app-inbound")
    check = ref["claimCheck"]
    assert "body" not in ref and "bodyBase64" not in ref
    assert check["size"] == len(payload) and check["sha256"] == hashlib.sha256(payload).hexdigest()
    assert check["container"] == "app-claimcheck"
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    async with blobs:
        data = await (await blobs.get_blob_client(check["container"], check["blob"]).download_blob()).readall()
    assert data == payload


async def test_the_claim_check_threshold_is_the_encoded_size():
    message = fanin.inbound_message(id="x", kind="http", connection="c", method="POST", path="/", query="", headers={},
                                    received_at=fanin.utc_now_text())
    overhead = len(json.dumps(fanin.with_body(message, b""), separators=(",", ":")))
    fits = 48 * 1024 - overhead  # raw JSON of 48 KiB is 64 KiB after base64
    assert fanin.encoded_size(json.dumps(fanin.with_body(message, b"a" * fits), separators=(",", ":"))) <= fanin.QUEUE_MESSAGE_LIMIT
    assert fanin.encoded_size(json.dumps(fanin.with_body(message, b"a" * (fits + 3)), separators=(",", ":"))) > fanin.QUEUE_MESSAGE_LIMIT


async def test_storage_failure_answers_503_so_nothing_acknowledged_is_lost(emulator, azurite, bridge_env, monkeypatch):
    monkeypatch.setattr(storage, "RETRY_TOTAL", 0)
    bridge_env(BridgeStorage="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
                             "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1")
    window = asyncio.create_task(listener.run_window(get_settings(), "inbound", 2.5))
    async with sender(emulator) as client:
        resp = await request_when_online(client, "POST", "/x", body=b"keep me")
        assert resp.status == 503 and resp.headers["Retry-After"] == str(listener.RETRY_AFTER_SECONDS)
        assert (await resp.json())["error"] == "store_failed"
    counts = await window
    assert counts.storeFailures == 1 and counts.stored == 0 and "storing into queue" in counts.lastError


async def test_a_window_without_the_listen_right_reports_the_error(emulator, bridge_env):
    bridge_env(RELAY_CLIENT_ID=identity(emulator.config, "sender")["clientId"])  # Sender on orders only
    counts = await asyncio.wait_for(listener.run_window(get_settings(), "inbound", 30), 10)
    assert not counts.ok and not counts.online
    assert "Listener role" in counts.lastError or "403" in counts.lastError


async def test_the_activity_writes_a_report_that_the_collect_activity_reads(app_functions, bridge_env):
    activity = app_functions["listener_window"].get_user_function()
    collect = app_functions["collect_listener_reports"].get_user_function()
    result = await activity({"connection": "inbound", "seconds": 0.5, "windowId": "g9-b", "report": True})
    assert result["ok"] and result["windowId"] == "g9-b" and json.dumps(result)  # counts only, JSON-serialisable
    collected = await collect({"connection": "inbound", "windowIds": ["g9-b", "g9-x"]})
    assert collected["reports"]["g9-b"]["windowId"] == "g9-b" and collected["missing"] == ["g9-x"]
    again = await collect({"connection": "inbound", "windowIds": ["g9-b"]})
    assert again["missing"] == ["g9-b"]  # read once, then deleted


async def test_overlapping_windows_hand_over_without_a_gap(emulator, azurite, bridge_env, queues):
    """Window A (3 s) and window B (started 2 s later) on the same connection, a sender posting throughout."""
    settings = get_settings()
    window_a = asyncio.create_task(listener.run_window(settings, "inbound", 3.0, window_id="a"))
    statuses: list[int | str] = []
    async with sender(emulator) as client:
        await (await request_when_online(client, "POST", "/x", body=b"first")).read()
        started = asyncio.get_running_loop().time()
        window_b = None
        i = 0
        while asyncio.get_running_loop().time() - started < 3.5:
            if window_b is None and asyncio.get_running_loop().time() - started > 1.5:
                window_b = asyncio.create_task(listener.run_window(settings, "inbound", 3.0, window_id="b"))
            try:
                resp = await client.request("POST", "/x", body=f"m{i}".encode())
                statuses.append(resp.status)
                await resp.read()
            except NoListenerError:
                statuses.append("no-listener")
            i += 1
            await asyncio.sleep(0.02)
    a, b = await window_a, await window_b
    accepted = statuses.count(202) + 1
    assert "no-listener" not in statuses, statuses  # a listener was connected the whole time
    assert set(statuses) <= {202, 503}  # 503: a request that reached A while it was closing (the sender retries)
    assert a.stored + b.stored == accepted and a.stored > 0 and b.stored > 0
    stored = await queues("app-inbound", expect=accepted)
    assert len(stored) == accepted
    print(f"handover: {len(statuses)} requests, {statuses.count(503)} answered 503 while window A closed")
