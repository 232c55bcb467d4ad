"""Issue 11 row 9: an on-premises status outside 200-599 becomes 502 naming the listener's status; no hang.

The on-premises listener is the relay library's, answering the odd status through the emulator.
The test asserts outcomes only; the bridge's own timeout is lowered so that a regression (the
old hang until 504) fails the assertion quickly instead of stalling the suite.
"""

from __future__ import annotations

import json

import pytest

from bridge import sender
from bridge.http_send import relay_send
from bridge.outbound import process_outbound
from bridge.settings import get_settings
from relay.listener import RelayedHttpResponse

from .conftest import onprem_listener
from .test_security_paths import raw_request


def answering(status: int):
    async def handle(request):
        await request.read()
        return RelayedHttpResponse(status, headers={"Content-Type": "text/plain"}, body=b"odd", reason="Odd")

    return handle


@pytest.mark.parametrize("status", [999, 600, 101, 100, 199, 102, 103])
async def test_status_outside_200_599_is_502_naming_it(emulator, bridge_env, monkeypatch, status):
    monkeypatch.setattr(sender, "REQUEST_TIMEOUT", 15.0)
    async with onprem_listener(emulator, "echo", answering(status)):
        resp = await relay_send(raw_request("echo/x"))
    assert resp.status_code == 502, (resp.status_code, resp.get_body()[:200])
    body = json.loads(resp.get_body())
    assert body["error"] == "bad_listener_status" and str(status) in body["message"] and body["transient"] is False


@pytest.mark.parametrize("status", [200, 204, 302, 404, 599])
async def test_statuses_in_range_pass_through(emulator, bridge_env, status):
    async with onprem_listener(emulator, "echo", answering(status)):
        resp = await relay_send(raw_request("echo/x"))
    assert resp.status_code == status


async def test_queue_send_poisons_an_out_of_range_status(emulator, bridge_env, monkeypatch):
    monkeypatch.setattr(sender, "REQUEST_TIMEOUT", 15.0)
    async with onprem_listener(emulator, "echo", answering(999)):
        outcome = await process_outbound(get_settings(), b'{"connection": "echo", "body": "x"}', message_id="m", dequeue_count=1)
    assert (outcome.result, outcome.error) == ("poisoned", "bad_listener_status"), outcome
