"""The real app (function_app.py) end to end through the local host, as a user runs it.

``python -m devhost`` (subprocess) serves /work/main's function_app.py against the session's
Azurite and Relay emulator; an on-premises echo service sits behind ``python -m relay listen``
(subprocess, SAS key). Nothing is mocked: HTTP trigger → Relay → on-premises and back; a
queue message → Relay; Relay → the durable listener orchestration → storage queues (and a
claim-check blob); the poison path after maxDequeueCount; a killed host resuming its
orchestration. The tests run in file order and share one host (the last one kills it).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
import uuid

import aiohttp
import pytest
from azure.storage.blob.aio import BlobServiceClient

from bridge.outbound import MAX_DEQUEUE_COUNT
from relay.client import HybridConnectionClient
from relay.errors import NoListenerError
from relay.sas import generate_sas_token, sas_resource_uri
from tests.app.conftest import ROOT_RULE, drain_queue, root_credential
from tests.devhost.helpers import Queues

from .conftest import (CLAIM_CHECK_CONTAINER, INBOUND, INBOUND_DEFAULT_QUEUE, NO_LISTENER, ONPREM, WINDOW_SECONDS,
                       wait_until)

pytestmark = pytest.mark.slow


def inbound_sender(emulator) -> HybridConnectionClient:
    """A sender outside Azure: the relay library's client with the namespace SAS key."""
    return HybridConnectionClient(emulator.address(INBOUND), root_credential(emulator), connection_verify=emulator.ca_cert)


async def post_inbound(client: HybridConnectionClient, path: str, body: bytes, headers: dict | None = None,
                       timeout: float = 30.0) -> tuple[dict, list]:
    """POST until acknowledged (202); retries what a sender retries: no listener yet, 503 while a window closes."""
    deadline = time.monotonic() + timeout
    outcomes: list = []
    while True:
        try:
            async with await client.request("POST", path, body=body, headers=headers) as response:
                outcomes.append(response.status)
                if response.status == 202:
                    ack = await response.json()
                    assert response.headers["X-Relay-Message-Id"] == ack["id"]
                    return ack, outcomes
                assert response.status == 503, (response.status, await response.text())
                await response.read()
        except NoListenerError:
            outcomes.append("no-listener")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never acknowledged: {outcomes[-10:]}")
        await asyncio.sleep(0.1)


async def read_queue(azurite, name: str, expect: int) -> list[dict]:
    return [json.loads(text) for text in await drain_queue(azurite.connection_string, name, expect=expect, timeout=15)]


def stored_body(message: dict) -> bytes:
    """A consumer's view of an inbound message's body (docs/app.md, inbound message format)."""
    if "body" in message:
        return message["body"].encode("utf-8")
    return base64.b64decode(message["bodyBase64"])


async def start_listener(stack, http) -> None:
    async with http.post(f"{stack.api}/listeners/start/{INBOUND}",
                         headers={"x-functions-key": stack.host.master_key}) as response:
        assert response.status in (200, 202), await response.text()  # 200: the timer starter was first
        assert (await response.json())["instanceId"] == f"relay-listener-{INBOUND}"


# ---- 1. HTTP → Relay → on-premises echo → back --------------------------------------------------
async def test_http_send_reaches_the_onprem_service_and_returns_its_answer(stack, onprem, http):
    key = stack.host.function_key
    binary = os.urandom(200 * 1024)  # more than the 64 KiB control-channel limit: rendezvous both ways
    url = f"{stack.api}/relay/{ONPREM}/some/path"
    async with http.post(url, params={"x": "1", "code": key}, data=binary,
                         headers={"Content-Type": "application/octet-stream", "X-Trace": "e2e-http-1",
                                  "Authorization": "Bearer must-not-leave", "Cookie": "c=1"}) as response:
        answer = await response.read()
        assert response.status == 201, answer[:500]
        assert response.headers["X-Echo-Path"] == "/some/path?x=1"  # code= stripped, path relative to the connection
        assert response.headers["X-Echo-Method"] == "POST"
        assert response.content_type == "application/octet-stream"
    assert answer == binary
    [seen] = onprem.requests_with("X-Trace", "e2e-http-1")
    assert seen["body"] == binary and seen["path_qs"] == "/some/path?x=1"
    assert "Authorization" not in seen["headers"] and "Cookie" not in seen["headers"]

    text = "grüße aus der Cloud ✓".encode()
    async with http.put(f"{stack.api}/relay/{ONPREM}/t", data=text, headers={
            "x-functions-key": key, "Content-Type": "text/plain; charset=utf-8"}) as response:
        assert response.status == 201 and await response.read() == text
        assert response.headers["X-Echo-Method"] == "PUT"

    async with http.post(url, data=b"x") as response:  # no key: the host refuses before the app runs
        assert response.status == 401
    async with http.post(f"{stack.api}/relay/{NO_LISTENER}/x", params={"code": key}, data=b"x") as response:
        assert response.status == 503 and (await response.json())["error"] == "no_listener"
        assert response.headers["Retry-After"] == "5"


# ---- 2. queue message → Relay → on-premises ----------------------------------------------------
async def test_queue_envelope_is_delivered_with_an_idempotency_key(stack, onprem, azurite):
    queues = Queues(azurite.connection_string)
    text_id, binary_id = f"e2e-q-{uuid.uuid4().hex[:8]}", f"e2e-q-{uuid.uuid4().hex[:8]}"
    binary = os.urandom(3000)
    await queues.send("relay-outbound", json.dumps({
        "id": text_id, "connection": ONPREM, "path": "/from-queue?n=42", "method": "PUT",
        "headers": {"Content-Type": "application/json", "X-Trace": text_id}, "body": {"n": 42, "text": "grüße"}}))
    await queues.send("relay-outbound", json.dumps({
        "id": binary_id, "connection": ONPREM, "path": "/bin",
        "headers": {"Content-Type": "application/octet-stream"}, "bodyBase64": base64.b64encode(binary).decode()}))

    await wait_until(lambda: onprem.requests_with("Idempotency-Key", text_id) and onprem.requests_with("Idempotency-Key", binary_id),
                     30, "the queue messages at the on-premises service")
    [seen] = onprem.requests_with("Idempotency-Key", text_id)
    assert (seen["method"], seen["path_qs"]) == ("PUT", "/from-queue?n=42")
    assert json.loads(seen["body"]) == {"n": 42, "text": "grüße"} and seen["headers"]["X-Trace"] == text_id
    [seen] = onprem.requests_with("Idempotency-Key", binary_id)
    assert (seen["method"], seen["path_qs"], seen["body"]) == ("POST", "/bin", binary)

    async def outbound_empty():  # deleted after success (not left invisible, not poisoned)
        async with queues.client("relay-outbound") as queue:
            return not [m async for m in queue.receive_messages(visibility_timeout=1)]

    await wait_until(outbound_empty, 10, "relay-outbound to be empty")
    poisoned = await queues.wait_for("relay-outbound-failed", lambda t: text_id in t or binary_id in t, timeout=0.5)
    assert poisoned == []


# ---- 3. Relay → durable listener → storage queues -----------------------------------------------
async def test_inbound_messages_land_in_the_routed_queues_across_a_handover(stack, emulator, azurite, http):
    await start_listener(stack, http)
    ids: dict[str, str] = {}
    binary = os.urandom(2000)
    async with inbound_sender(emulator) as client:
        ack, _ = await post_inbound(client, "/orders/7?x=1", binary,
                                    {"Content-Type": "application/octet-stream", "X-Trace": "t1"})
        assert ack["queue"] == "e2e-orders-in" and ack["claimCheck"] is False
        ids["orders"] = ack["id"]
        ack, _ = await post_inbound(client, "/misc", "grüße".encode(), {"X-Route": "eu", "Content-Type": "text/plain"})
        assert ack["queue"] == "e2e-eu-in"
        ids["eu"] = ack["id"]

        # A >48 KiB body, as a plain HTTPS POST with a SAS token (any platform can send like this).
        big = os.urandom(60 * 1024)
        token = generate_sas_token(sas_resource_uri(emulator.address(INBOUND)), ROOT_RULE, emulator.sas_key(ROOT_RULE))
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{emulator.http}/{INBOUND}/big?part=1", data=big, ssl=emulator.ssl_context(),
                                    headers={"ServiceBusAuthorization": token, "Content-Type": "application/x-big"}) as resp:
                assert resp.status == 202, await resp.text()
                big_ack = await resp.json()
        assert big_ack["queue"] == INBOUND_DEFAULT_QUEUE and big_ack["claimCheck"] is True

        # Keep sending through at least one window handover (a continue-as-new with a carried window).
        first = await stack.listeners(http)
        start_generation = (first["customStatus"] or {}).get("generation", 0)
        handover_acks: list[str] = []
        outcomes: list = []
        deadline = time.monotonic() + 4 * WINDOW_SECONDS
        while True:
            ack, tries = await post_inbound(client, "/ticks", f"tick {len(handover_acks)}".encode())
            handover_acks.append(ack["id"])
            outcomes += tries
            status = await stack.listeners(http)
            if (status["customStatus"] or {}).get("generation", 0) >= start_generation + 1:  # window A closed, B took over
                break
            assert time.monotonic() < deadline, f"no handover within {4 * WINDOW_SECONDS} s: {status}\n{stack.log()[-3000:]}"
            await asyncio.sleep(0.15)
    assert "no-listener" not in outcomes, outcomes  # the overlapping windows left no gap
    assert set(outcomes) <= {202, 503}

    [orders] = await read_queue(azurite, "e2e-orders-in", 1)
    assert orders["id"] == ids["orders"] and stored_body(orders) == binary
    assert (orders["kind"], orders["connection"], orders["method"], orders["path"], orders["query"]) == (
        "http", INBOUND, "POST", "/orders/7", "x=1")
    assert orders["headers"]["X-Trace"] == "t1" and "ServiceBusAuthorization" not in orders["headers"]
    [eu] = await read_queue(azurite, "e2e-eu-in", 1)
    assert eu["id"] == ids["eu"] and stored_body(eu) == "grüße".encode()

    rest = await read_queue(azurite, INBOUND_DEFAULT_QUEUE, 1 + len(handover_acks))
    by_id = {m["id"]: m for m in rest}
    assert set(by_id) == {big_ack["id"], *handover_acks}  # every acknowledged message stored, once
    assert [stored_body(by_id[i]) for i in handover_acks] == [f"tick {n}".encode() for n in range(len(handover_acks))]
    ref = by_id[big_ack["id"]]
    check = ref["claimCheck"]
    assert "body" not in ref and "bodyBase64" not in ref and ref["query"] == "part=1"
    assert check["container"] == CLAIM_CHECK_CONTAINER and check["size"] == len(big)
    assert check["sha256"] == hashlib.sha256(big).hexdigest()
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as blobs:
        blob = blobs.get_blob_client(check["container"], check["blob"])
        data = await (await blob.download_blob()).readall()
        assert (await blob.get_blob_properties()).content_settings.content_type == "application/x-big"
    assert data == big and hashlib.sha256(data).hexdigest() == check["sha256"]

    status = await stack.listeners(http)
    assert status["runtimeStatus"] == "Running" and status["customStatus"]["connection"] == INBOUND
    assert status["customStatus"]["counts"]["windows"] >= 1 and status["customStatus"]["counts"]["stored"] >= 1
    print(f"handover: {len(handover_acks)} requests over generations {start_generation}->"
          f"{status['customStatus']['generation']}, {outcomes.count(503)} answered 503 while a window closed")


# ---- 4. poison after maxDequeueCount ------------------------------------------------------------
async def test_undeliverable_message_is_retried_then_poisoned_with_the_reason(stack, azurite):
    """No listener on ``echo``: transient, retried (visibilityTimeout overridden to 1 s by the
    ``AzureFunctionsJobHost__extensions__queues__visibilityTimeout`` app setting), then on attempt
    maxDequeueCount (5, host.json) the bridge writes the poison record with the reason."""
    assert "host.json extensions.queues.visibilityTimeout overridden" in stack.log()
    queues = Queues(azurite.connection_string)
    message_id = f"e2e-poison-{uuid.uuid4().hex[:8]}"
    original = json.dumps({"id": message_id, "connection": NO_LISTENER, "path": "/nobody", "body": "lost?"})
    started = time.monotonic()
    await queues.send("relay-outbound", original)
    [text] = await queues.wait_for("relay-outbound-failed", lambda t: message_id in t, timeout=40)
    record = json.loads(text)
    assert record["id"] == message_id and record["connection"] == NO_LISTENER
    assert record["error"] == "no_listener" and record["dequeue_count"] == MAX_DEQUEUE_COUNT == 5  # host.json
    assert record["reason"].startswith("gave up after 5 attempts") and record["message"] == original
    log = stack.log()
    assert all(f"RetryLater: attempt {n}/5: no on-premises listener is connected to hybrid connection '{NO_LISTENER}'" in log
               for n in range(1, 5))  # the host delivered it five times, with the dequeue count

    async with queues.client("relay-outbound") as queue:  # gone from the trigger queue
        peeked = await queue.peek_messages(max_messages=32)
        assert not [m for m in peeked if message_id in base64.b64decode(m.content).decode()]
    print(f"poisoned after {MAX_DEQUEUE_COUNT} attempts in {time.monotonic() - started:.1f} s")


# ---- 5. a killed host resumes the listener orchestration ----------------------------------------
async def test_killed_host_resumes_the_listener_orchestration(stack, emulator, azurite, http):
    await start_listener(stack, http)
    before = await wait_until(lambda: _status_when(stack, http, lambda s: s["runtimeStatus"] == "Running"
                                                   and s["customStatus"]["generation"] >= 1
                                                   and s["customStatus"]["phase"] == "listening"),
                              4 * WINDOW_SECONDS, "a listening listener past its first generation")
    generation = before["customStatus"]["generation"]

    await stack.kill()  # kill -9 in the middle of the orchestration: no clean shutdown
    async with inbound_sender(emulator) as client:
        async def offline():
            try:
                async with await client.request("POST", "/while-down", body=b"x"):
                    return False
            except NoListenerError:
                return True
        await wait_until(offline, 10, "the killed host's listeners to disappear")

        await stack.start()  # same state dir: durable SQLite and keys survive
        assert "resumed instance relay-listener-inbound" in stack.log().rsplit("===== devhost start #", 1)[1]
        after = await stack.listeners(http)
        assert after["runtimeStatus"] == "Running" and after["createdTime"] == before["createdTime"]
        assert after["customStatus"]["generation"] >= generation  # resumed, not started over at 0
        restarted_at = after["customStatus"]["generation"]

        body = f"after restart {uuid.uuid4()}".encode()
        ack, _ = await post_inbound(client, "/after-restart", body, {"Content-Type": "text/plain"},
                                    timeout=2 * WINDOW_SECONDS)
    [message] = await read_queue(azurite, INBOUND_DEFAULT_QUEUE, 1)
    assert message["id"] == ack["id"] and stored_body(message) == body and message["path"] == "/after-restart"

    resumed = await wait_until(lambda: _status_when(stack, http, lambda s: s["customStatus"]["generation"] > restarted_at),
                               3 * WINDOW_SECONDS, "the resumed orchestration to continue as new")
    assert resumed["runtimeStatus"] == "Running" and resumed["createdTime"] == before["createdTime"]


async def _status_when(stack, http, predicate):
    status = await stack.listeners(http)
    return status if status.get("customStatus") and predicate(status) else None


async def test_admin_stop_keeps_the_listener_stopped_until_started(stack, http):
    master = {"x-functions-key": stack.host.master_key}
    async with http.post(f"{stack.api}/listeners/stop/{INBOUND}", headers=master) as response:
        assert response.status == 202 and (await response.json())["result"] == "stopped"
    status = await stack.listeners(http)
    assert status["runtimeStatus"] == "Terminated" and status["stoppedByAdmin"] is True
    async with http.post(f"{stack.api}/listeners/stop/{INBOUND}", headers=master) as response:
        assert response.status == 200 and (await response.json())["result"] == "not-running"
    async with http.post(f"{stack.api}/listeners/start/{INBOUND}", headers={"x-functions-key": stack.host.function_key}) as response:
        assert response.status == 401  # admin level: the master key only
    async with http.post(f"{stack.api}/listeners/start/{INBOUND}", headers=master) as response:
        assert response.status == 202 and (await response.json())["result"] == "started"
    status = await wait_until(lambda: _status_when(stack, http, lambda s: s["runtimeStatus"] == "Running"),
                              10, "the restarted listener")
    assert status["stoppedByAdmin"] is False and status["customStatus"]["generation"] == 0  # a fresh instance
    async with http.post(f"{stack.api}/listeners/start/nope", headers=master) as response:
        assert response.status == 404
