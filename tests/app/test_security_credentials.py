"""Issue 11 rows 7 and 10: credentials removed means all of them, in both directions, case-insensitive.

Outbound (relay_send and queue envelopes) and inbound (messages the listener window stores) use
the one deny-list in :mod:`bridge.headers`.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from bridge import listener
from bridge.headers import is_credential_header, strip_credentials_from_query
from bridge.http_send import relay_send
from bridge.outbound import process_outbound
from bridge.settings import get_settings
from relay.client import HybridConnectionClient
from relay.errors import NoListenerError

from .conftest import clear_queue, drain_queue, echo_handler, onprem_listener, root_credential
from .test_security_paths import raw_request

CREDENTIAL_HEADERS = {
    "X-Api-Key": "k1", "Ocp-Apim-Subscription-Key": "k2", "X-Functions-Key": "k3", "Authorization": "Bearer t",
    "Proxy-Authorization": "Basic p", "Cookie": "s=1", "ServiceBusAuthorization": "SharedAccessSignature sr=x&sig=y",
    "X-Session-Token": "t", "X-Client-Secret": "s", "X-Db-Password": "p", "X-Signing-Key": "k", "x-api-KEY": "k4",
}
KEPT_HEADERS = {"X-Trace": "t1", "Idempotency-Key": "idem-1", "Content-Type": "text/plain"}
CREDENTIAL_QUERY = "code=f1&Code=f2&CODE=f3&sig=s1&SIG=s2&sb-hc-token=t&sv=2020&se=1&sp=r&skn=rule&api_key=a&access_token=b&x-secret=c"
KEPT_QUERY = "q=1&page=2&codec=h264&sigma=3"


@pytest.mark.parametrize("name", list(CREDENTIAL_HEADERS))
def test_credential_headers_are_recognised_in_any_case(name):
    assert is_credential_header(name) and is_credential_header(name.upper()) and is_credential_header(name.lower())


@pytest.mark.parametrize("name", ["Idempotency-Key", "X-Trace", "Content-Type", "traceparent", "Accept"])
def test_ordinary_headers_are_not_credentials(name):
    assert not is_credential_header(name)


def test_query_credentials_are_stripped_and_the_rest_kept_byte_for_byte():
    assert strip_credentials_from_query(f"{CREDENTIAL_QUERY}&{KEPT_QUERY}") == KEPT_QUERY
    assert strip_credentials_from_query("a=%20x&%63ode=k&b") == "a=%20x&b"  # an encoded name is still 'code'
    assert strip_credentials_from_query("") == ""


async def test_relay_send_forwards_no_credential_header_or_query(emulator, bridge_env):
    seen = []
    async with onprem_listener(emulator, "echo", echo_handler(seen)):
        resp = await relay_send(raw_request(f"echo/x?{CREDENTIAL_QUERY}&{KEPT_QUERY}",
                                            headers={**CREDENTIAL_HEADERS, **KEPT_HEADERS}))
    assert resp.status_code == 201, resp.get_body()
    [request] = seen
    assert request.query == KEPT_QUERY
    names = {k.lower() for k in request.headers}
    assert {"x-trace", "idempotency-key", "content-type"} <= names
    assert not names & {k.lower() for k in CREDENTIAL_HEADERS}


async def test_envelopes_forward_no_credential_header_or_query(emulator, bridge_env):
    seen = []
    raw = json.dumps({"connection": "echo", "path": f"/x?{CREDENTIAL_QUERY}&{KEPT_QUERY}",
                      "headers": {**CREDENTIAL_HEADERS, "X-Trace": "t1"}, "body": "b"}).encode()
    async with onprem_listener(emulator, "echo", echo_handler(seen)):
        outcome = await process_outbound(get_settings(), raw, message_id="m", dequeue_count=1)
    assert outcome.result == "delivered", outcome
    [request] = seen
    assert request.query == KEPT_QUERY
    names = {k.lower() for k in request.headers}
    assert "x-trace" in names and not names & {k.lower() for k in CREDENTIAL_HEADERS}


async def test_inbound_messages_keep_no_credential_header_or_query(emulator, azurite, bridge_env):
    await clear_queue(azurite.connection_string, "app-inbound")
    settings = get_settings()
    window = asyncio.create_task(listener.run_window(settings, "inbound", 4.0))
    async with HybridConnectionClient(emulator.address("inbound"), root_credential(emulator), connection_verify=emulator.ca_cert) as client:
        for _ in range(100):
            try:
                resp = await client.request("POST", f"/in?{CREDENTIAL_QUERY}&{KEPT_QUERY}", body=b"x",
                                            headers={**CREDENTIAL_HEADERS, "X-Trace": "t1"})
                break
            except NoListenerError:
                await asyncio.sleep(0.05)
        assert resp.status == 202, await resp.text()
        stream = await client.connect(path=f"/ws?{CREDENTIAL_QUERY}&{KEPT_QUERY}", headers={"X-Api-Key": "k", "X-Trace": "t2"})
        async with stream:
            await stream.send("hello")
            await asyncio.sleep(0.3)
    await window
    stored = [json.loads(m) for m in await drain_queue(azurite.connection_string, "app-inbound", expect=2)]
    assert len(stored) == 2
    for message in stored:
        assert message["query"] == KEPT_QUERY, message["query"]
        names = {k.lower() for k in message["headers"]}
        assert not names & {k.lower() for k in CREDENTIAL_HEADERS}, names
        assert "x-trace" in names
