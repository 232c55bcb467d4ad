"""Issue 11 through the real app in devhost (subprocess), the emulator and Azurite: closed by construction.

The app's identity ("bridge" in the emulator config) holds Azure Relay Owner on the whole
namespace, as with ``make run``: RBAC would let it reach ``inbound``, so the allow-list
(RELAY_OUTBOUND_CONNECTIONS = orders,echo) is the only guard. Requests go out with their raw
bytes (``yarl.URL(..., encoded=True)``), so devhost sees the dot segments and escapes as sent.
"""

from __future__ import annotations

import json
import uuid

import pytest
from yarl import URL

from tests.app.conftest import echo_handler, onprem_listener
from tests.devhost.helpers import Queues

from .conftest import INBOUND

pytestmark = pytest.mark.slow

TRICKS = [
    "echo/../inbound/x",
    "echo/%2e%2e/inbound/x",
    "echo/..%2Finbound/x",
    "echo%2F..%2Finbound/x",
    "echo/../inbound/x?mode=ws",
    "echo%2F..%2Finbound?mode=ws",
    "echo/a/../../inbound",
]


async def test_path_tricks_never_reach_a_connection_outside_the_allow_list(stack, emulator, azurite, http):
    reached: list[str] = []

    async def record(request):
        reached.append(request.target)
        return await echo_handler()(request)

    def accept(ctx):
        reached.append("websocket")
        return True

    key = stack.host.function_key
    async with onprem_listener(emulator, INBOUND, record, accept_handler=accept), onprem_listener(emulator, "echo", echo_handler()):
        for tail in TRICKS:
            sep = "&" if "?" in tail else "?"
            url = URL(f"{stack.api}/relay/{tail}{sep}code={key}", encoded=True)
            async with http.post(url, data=b"x") as response:
                text = await response.text()
                assert response.status in (400, 404), (tail, response.status, text[:300])
                body = json.loads(text)
                assert body["error"] in ("bad_path", "unknown_connection") and body["transient"] is False, (tail, body)
        # the legitimate neighbour still works, and ?Code= (any case) never leaves the host
        url = URL(f"{stack.api}/relay/echo/ok%20path?x=1&Code={key}", encoded=True)
        async with http.post(url, data=b"fine") as response:
            assert response.status == 201, await response.text()
            assert response.headers["X-Echo-Path"] == "/echo/ok%20path?x=1"

        queues = Queues(azurite.connection_string)
        message_id = f"e2e-trick-{uuid.uuid4().hex[:8]}"
        await queues.send("relay-outbound", json.dumps(
            {"id": message_id, "connection": "echo", "path": "/../inbound/x", "body": "x"}))
        [text] = await queues.wait_for("relay-outbound-failed", lambda t: message_id in t, timeout=30)
        record_ = json.loads(text)
        assert record_["error"] == "malformed_envelope" and record_["dequeue_count"] == 1
        assert "dot segment" in record_["reason"]
    assert reached == []
