"""Queue send (relay_queue_send) called directly with a QueueMessage carrying dequeue_count, against the
emulator and Azurite: delivery, the transient/permanent split, and the poison records."""

from __future__ import annotations

import base64
import json

import pytest
from azure.functions.queue import QueueMessage

from bridge.outbound import MAX_DEQUEUE_COUNT, RetryLater
from bridge.queue_send import relay_queue_send
from bridge.settings import OUTBOUND_FAILED_QUEUE
from tests.fixtures.emulator import identity

from .conftest import clear_queue, drain_queue, echo_handler, onprem_listener


def queue_message(body: bytes | str, *, id: str = "m-1", dequeue_count: int = 1) -> QueueMessage:
    return QueueMessage(id=id, body=body, dequeue_count=dequeue_count)


@pytest.fixture
async def poison(azurite, bridge_env):
    await clear_queue(azurite.connection_string, OUTBOUND_FAILED_QUEUE)

    async def read(expect: int = 1) -> list[dict]:
        return [json.loads(m) for m in await drain_queue(azurite.connection_string, OUTBOUND_FAILED_QUEUE, expect=expect, timeout=3)]

    return read


async def test_envelope_is_delivered_with_method_path_headers_and_idempotency_key(emulator, bridge_env, poison):
    seen = []
    envelope = {"id": "order-42", "connection": "echo", "path": "/api/orders?x=1", "method": "PUT",
                "headers": {"Content-Type": "application/json", "Authorization": "nope"}, "body": '{"n":42}'}
    async with onprem_listener(emulator, "echo", echo_handler(seen)):
        await relay_queue_send(queue_message(json.dumps(envelope)))
    request = seen[0]
    assert (request.method, request.target, request.body) == ("PUT", "/echo/api/orders?x=1", b'{"n":42}')
    assert request.headers["Idempotency-Key"] == "order-42"
    assert "Authorization" not in request.headers
    assert await poison(0) == []


async def test_binary_envelope_and_plain_message_go_to_their_connections(emulator, bridge_env, poison):
    seen = []
    payload = bytes(range(256))
    async with onprem_listener(emulator, "orders", echo_handler(seen)):
        await relay_queue_send(queue_message(json.dumps({"bodyBase64": base64.b64encode(payload).decode()})))
        await relay_queue_send(queue_message("plain text, not an envelope", id="m-2"))
    assert seen[0].body == payload
    assert seen[1].body == b"plain text, not an envelope"
    assert seen[1].headers["Idempotency-Key"] == "m-2"
    assert seen[1].headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    "body, error",
    [
        (json.dumps({"connection": "orders", "body": "a", "bodyBase64": "YQ=="}), "malformed_envelope"),
        (json.dumps({"connection": "orders", "colour": "red"}), "malformed_envelope"),
        (json.dumps({"connection": "billing", "body": "a"}), "unknown_connection"),
    ],
)
async def test_malformed_or_unknown_goes_straight_to_poison_with_the_reason(bridge_env, poison, body, error):
    await relay_queue_send(queue_message(body, dequeue_count=1))
    [record] = await poison()
    assert record["error"] == error
    assert record["message"] == body and record["dequeue_count"] == 1 and record["id"] == "m-1"
    assert record["reason"] and record["time"].endswith("Z")


async def test_missing_role_is_permanent(emulator, bridge_env, poison):
    bridge_env(RELAY_CLIENT_ID=identity(emulator.config, "nobody")["clientId"])
    async with onprem_listener(emulator, "echo", echo_handler()):
        await relay_queue_send(queue_message(json.dumps({"connection": "echo", "body": "x"})))
    [record] = await poison()
    assert record["error"] == "relay_forbidden" and "Azure Relay Sender role" in record["reason"]


async def test_listener_4xx_is_permanent_5xx_is_transient(emulator, bridge_env, poison):
    from relay.listener import RelayedHttpResponse

    status = {"value": 400}

    async def handler(request):
        return RelayedHttpResponse(status["value"], body=b"nope")

    async with onprem_listener(emulator, "echo", handler):
        await relay_queue_send(queue_message(json.dumps({"connection": "echo", "body": "x"})))
        [record] = await poison()
        assert record["error"] == "listener_rejected" and "400" in record["reason"] and "nope" in record["reason"]
        status["value"] = 503
        with pytest.raises(RetryLater):
            await relay_queue_send(queue_message(json.dumps({"connection": "echo", "body": "x"}), dequeue_count=2))
        assert await poison(0) == []


async def test_no_listener_retries_then_poisons_on_the_last_attempt(bridge_env, poison):
    body = json.dumps({"connection": "echo", "body": "later"})
    for attempt in range(1, MAX_DEQUEUE_COUNT):
        with pytest.raises(RetryLater):
            await relay_queue_send(queue_message(body, dequeue_count=attempt))
    assert await poison(0) == []
    await relay_queue_send(queue_message(body, dequeue_count=MAX_DEQUEUE_COUNT))
    [record] = await poison()
    assert record["error"] == "no_listener" and record["dequeue_count"] == MAX_DEQUEUE_COUNT
    assert "gave up after 5 attempts" in record["reason"] and record["message"] == body


async def test_poison_record_carries_the_envelope_id(bridge_env, poison):
    """The record's id is the envelope's id (the Idempotency-Key), not the queue message id (docs/app.md)."""
    body = json.dumps({"id": "order-42", "connection": "echo", "body": "later"})  # no listener on echo
    await relay_queue_send(queue_message(body, id="queue-msg-7", dequeue_count=MAX_DEQUEUE_COUNT))
    [record] = await poison()
    assert record["id"] == "order-42" and record["error"] == "no_listener"


async def test_a_max_dequeue_count_override_moves_the_last_attempt(bridge_env, poison):
    """The host honours AzureFunctionsJobHost__extensions__queues__maxDequeueCount over host.json; so does the bridge."""
    from bridge.outbound import MAX_DEQUEUE_COUNT_SETTING, max_dequeue_count

    assert max_dequeue_count({}) == MAX_DEQUEUE_COUNT
    assert max_dequeue_count({MAX_DEQUEUE_COUNT_SETTING.upper(): "3"}) == 3
    assert max_dequeue_count({MAX_DEQUEUE_COUNT_SETTING: "x"}) == MAX_DEQUEUE_COUNT
    bridge_env(**{MAX_DEQUEUE_COUNT_SETTING: "2"})
    body = json.dumps({"connection": "echo", "body": "later"})  # no listener on echo
    with pytest.raises(RetryLater, match="attempt 1/2"):
        await relay_queue_send(queue_message(body, dequeue_count=1))
    await relay_queue_send(queue_message(body, dequeue_count=2))
    [record] = await poison()
    assert record["dequeue_count"] == 2 and "gave up after 2 attempts" in record["reason"]


async def test_poison_records_are_base64_encoded_like_the_hosts(azurite, bridge_env, poison):
    from azure.storage.queue.aio import QueueClient

    await relay_queue_send(queue_message(b"\xff\xfe not utf-8 {", dequeue_count=5))  # plain body, default connection, no listener
    client = QueueClient.from_connection_string(azurite.connection_string, OUTBOUND_FAILED_QUEUE)
    async with client:
        raw = [m.content async for m in client.receive_messages()]
    record = json.loads(base64.b64decode(raw[0]))
    assert base64.b64decode(record["messageBase64"]) == b"\xff\xfe not utf-8 {"
    await clear_queue(azurite.connection_string, OUTBOUND_FAILED_QUEUE)


async def test_identity_endpoint_failure_is_retried(bridge_env, poison):
    bridge_env(IDENTITY_HEADER="wrong-secret")
    with pytest.raises(RetryLater, match="managed identity token"):
        await relay_queue_send(queue_message(json.dumps({"connection": "echo", "body": "x"}), dequeue_count=1))
    assert await poison(0) == []


def test_max_dequeue_count_follows_the_process_environment(monkeypatch):
    """The per-message lookup remembers only where the setting is: a new, changed or removed value counts at once."""
    from bridge.outbound import MAX_DEQUEUE_COUNT_SETTING, max_dequeue_count

    monkeypatch.delenv(MAX_DEQUEUE_COUNT_SETTING, raising=False)
    assert max_dequeue_count() == MAX_DEQUEUE_COUNT
    monkeypatch.setenv(MAX_DEQUEUE_COUNT_SETTING.upper(), "3")
    assert max_dequeue_count() == 3
    monkeypatch.setenv(MAX_DEQUEUE_COUNT_SETTING.upper(), "7")  # same variable, new value
    assert max_dequeue_count() == 7
    monkeypatch.delenv(MAX_DEQUEUE_COUNT_SETTING.upper())
    assert max_dequeue_count() == MAX_DEQUEUE_COUNT
