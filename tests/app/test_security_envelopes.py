"""Issue 11 rows 5 and 6: every parse or validation failure of an envelope is permanent, poisoned at the first attempt.

And issue 10's poison records: the app's JSON records go to ``relay-outbound-failed``; the host's
raw moves keep ``relay-outbound-poison`` to themselves.
"""

from __future__ import annotations

import json

import pytest

from bridge.outbound import process_outbound
from bridge.settings import OUTBOUND_FAILED_QUEUE, OUTBOUND_POISON_QUEUE, get_settings
from tests.app.conftest import clear_queue, drain_queue, echo_handler, onprem_listener

DEEP = "[" * 5000 + "]" * 5000

MALFORMED = [
    ("deep-body", json.dumps({"connection": "echo", "path": "/x"})[:-1] + ', "body": ' + DEEP + "}", "too deeply"),
    ("deep-message", DEEP, "too deeply"),
    ("deep-object", '{"connection": "echo", "body": ' + '{"a":' * 3000 + "1" + "}" * 3000 + "}", "too deeply"),
    ("cr-lf-header", json.dumps({"connection": "echo", "headers": {"X-A": "v\r\nX-Injected: 1"}, "body": "x"}), "control character"),
    ("nul-header", json.dumps({"connection": "echo", "headers": {"X-A": "v\x00"}, "body": "x"}), "control character"),
    ("bad-header-name", json.dumps({"connection": "echo", "headers": {"X A": "v"}, "body": "x"}), "not a valid token"),
    ("lf-id", json.dumps({"id": "a\nb", "connection": "echo", "body": "x"}), "control character"),
    ("nul-id", json.dumps({"id": "a\x00b", "connection": "echo", "body": "x"}), "control character"),
    ("cr-path", json.dumps({"connection": "echo", "path": "/a\rb", "body": "x"}), "control character"),
    ("dot-path", json.dumps({"connection": "echo", "path": "/a/../b", "body": "x"}), "dot segment"),
    ("bad-connection", json.dumps({"connection": "echo\r\n", "body": "x"}), "not valid"),
]


@pytest.fixture
async def failed_queue(azurite, bridge_env):
    for name in (OUTBOUND_FAILED_QUEUE, OUTBOUND_POISON_QUEUE):
        await clear_queue(azurite.connection_string, name)

    async def read(expect: int = 1) -> list[dict]:
        return [json.loads(m) for m in await drain_queue(azurite.connection_string, OUTBOUND_FAILED_QUEUE, expect=expect, timeout=5)]

    return read


@pytest.mark.parametrize("name, raw, why", MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_is_poisoned_at_the_first_attempt_with_a_reason(emulator, failed_queue, azurite, name, raw, why):
    seen = []
    async with onprem_listener(emulator, "echo", echo_handler(seen)):
        outcome = await process_outbound(get_settings(), raw.encode(), message_id="qid-1", dequeue_count=1)
    assert (outcome.result, outcome.error) == ("poisoned", "malformed_envelope"), outcome
    assert why in outcome.reason
    assert seen == []
    [record] = await failed_queue()
    assert record["error"] == "malformed_envelope" and record["dequeue_count"] == 1 and why in record["reason"]
    assert record["message"] == raw  # the original, to fix and replay
    # The host's own poison queue is left to the host's raw moves.
    assert await drain_queue(azurite.connection_string, OUTBOUND_POISON_QUEUE, expect=1, timeout=0.5) == []
