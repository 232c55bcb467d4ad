"""One trace across real processes, collected over the standard OTLP/HTTP protocol.

A caller (this test, its own root span) makes ONE HTTP call to the real app under devhost
(subprocess); the app's ``relay_send`` sends it through the Relay emulator to ``relay agent``
(subprocess, ``exporter = "otlp"``), which forwards it to a local service (this test, which
continues the ``traceparent`` it receives). The app and the agent export their spans with the
OTLP/HTTP exporter to a small OTLP receiver in this test (``POST /v1/traces``, protobuf
``ExportTraceServiceRequest`` decoded with ``opentelemetry-proto``), configured only by the
standard ``OTEL_*`` variables. The spans of the four processes must form one trace with the
right parents. Then an inbound message stored by the durable listener carries a ``traceparent``
that a consumer continues.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from opentelemetry import propagate
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from relay import tracing
from tests.agent.agent_helpers import AgentProcess, toml_str
from tests.agent.conftest import dev_connection_string
from tests.app.conftest import clear_queue, drain_queue
from tests.devhost.helpers import Queues

from .conftest import INBOUND_DEFAULT_QUEUE, ONPREM, BridgeStack, bridge_host_env, stop_process, wait_until
from .test_app_e2e import inbound_sender, post_inbound, start_listener

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
APP_SERVICE = "bridge-e2e"
AGENT_SERVICE = "agent-e2e"
EXPORT_DELAY_MS = "200"  # OTEL_BSP_SCHEDULE_DELAY: the batch processors export every 200 ms, so nothing waits 5 s


@dataclass
class ReceivedSpan:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (binary protobuf, as the SDK's exporter sends by default)."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf", request.content_type
        body = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in s.attributes}
                    self.spans.append(ReceivedSpan(resource.get("service.name", ""), s.name, s.kind, s.trace_id.hex(),
                                                   s.span_id.hex(), s.parent_span_id.hex(), attributes))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def named(self, name: str, service: str | None = None) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name and (service is None or s.service == service)]


def _value(value):
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


# This process's own spans (the caller, the local service, the consumer): an SDK provider of its own, not the
# global one, so other test modules' providers do not matter; its spans are kept in memory.
LOCAL_SPANS = InMemorySpanExporter()
LOCAL_PROVIDER = TracerProvider()
LOCAL_PROVIDER.add_span_processor(SimpleSpanProcessor(LOCAL_SPANS))
TRACER = LOCAL_PROVIDER.get_tracer("e2e")


def hexids(span) -> tuple[str, str]:
    ctx = span.get_span_context() if hasattr(span, "get_span_context") else span.context
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def otel_env(receiver: OtlpReceiver, service: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": service,
            "OTEL_BSP_SCHEDULE_DELAY": EXPORT_DELAY_MS}


@pytest_asyncio.fixture(scope="module")
async def receiver():
    r = OtlpReceiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest_asyncio.fixture(scope="module")
async def local_service():
    """The on-premises service: continues the trace from the ``traceparent`` the agent sends, as an instrumented service does."""
    seen: list[dict] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        context = propagate.extract(dict(request.headers))
        with TRACER.start_as_current_span("local service", context=context, kind=SpanKind.SERVER):
            seen.append({"path": request.path_qs, "traceparent": request.headers.get("traceparent"), "body": body})
            return web.Response(status=201, body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module")
async def agent(emulator, receiver, local_service, tmp_path_factory):
    """``relay agent`` (subprocess) serving ``orders`` for the local service, exporting its spans over OTLP."""
    url, _ = local_service
    tmp = tmp_path_factory.mktemp("trace-agent")
    config = tmp / "agent.toml"
    config.write_text(f"""
[tracing]
exporter = "otlp"
service_name = {toml_str(AGENT_SERVICE)}
[[connections]]
name = "orders"
target = {toml_str(url)}
[connections.credential]
type = "connection_string"
connection_string_env = "TRACE_ORDERS_CS"
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "agent", "--config", str(config), "--log-format", "json",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=str(REPO),
        env={**os.environ, **otel_env(receiver, AGENT_SERVICE), "TRACE_ORDERS_CS": dev_connection_string(emulator, ONPREM)})
    process = AgentProcess(proc)
    try:
        await process.wait_log(lambda r: r.get("event") == "online")
        yield process
    finally:
        await stop_process(proc)


@pytest_asyncio.fixture(scope="module")
async def traced_stack(emulator, azurite, receiver, tmp_path_factory):
    """The real app under devhost, exporting its spans over OTLP (only the standard OTEL_* settings)."""
    tmp = tmp_path_factory.mktemp("trace-host")
    for queue in (INBOUND_DEFAULT_QUEUE, "relay-outbound", "relay-outbound-failed"):
        await clear_queue(azurite.connection_string, queue)
    bridge = BridgeStack(bridge_host_env(emulator, azurite, **otel_env(receiver, APP_SERVICE)), tmp / "state", tmp / "devhost.log")
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()


async def test_one_http_call_through_devhost_relay_and_agent_is_one_trace(traced_stack, agent, receiver, local_service):
    _, seen = local_service
    LOCAL_SPANS.clear()
    with TRACER.start_as_current_span("caller", kind=SpanKind.CLIENT) as caller:
        headers = {"Content-Type": "text/plain", "x-functions-key": traced_stack.host.function_key}
        propagate.inject(headers)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{traced_stack.api}/relay/{ONPREM}/items?x=1", data=b"traced", headers=headers) as response:
                assert response.status == 201, await response.text()
                assert await response.read() == b"traced"
    trace_id, caller_id = hexids(caller)

    def chain_exported():
        return receiver.named(tracing.AGENT_FORWARD, AGENT_SERVICE) and receiver.named(tracing.RELAY_REQUEST, APP_SERVICE) \
            and receiver.named(tracing.FUNCTION_INVOCATION, APP_SERVICE)
    await wait_until(chain_exported, 30, "the app's and the agent's spans at the OTLP receiver")

    [invocation] = [s for s in receiver.named(tracing.FUNCTION_INVOCATION, APP_SERVICE) if s.trace_id == trace_id]
    [request] = [s for s in receiver.named(tracing.RELAY_REQUEST, APP_SERVICE) if s.trace_id == trace_id]
    [forward] = [s for s in receiver.named(tracing.AGENT_FORWARD, AGENT_SERVICE) if s.trace_id == trace_id]
    [local] = [s for s in LOCAL_SPANS.get_finished_spans() if s.name == "local service"]

    # caller -> function invocation (devhost) -> relay request -> (Relay) -> agent forward (agent) -> local service
    assert invocation.parent_span_id == caller_id and invocation.kind == PbSpan.SPAN_KIND_SERVER
    assert request.parent_span_id == invocation.span_id
    assert forward.parent_span_id == request.span_id and forward.kind == PbSpan.SPAN_KIND_SERVER
    assert hexids(local)[0] == trace_id and f"{local.parent.span_id:016x}" == forward.span_id
    assert seen[-1]["traceparent"].split("-")[1:3] == [trace_id, forward.span_id]
    assert invocation.attributes["faas.trigger"] == "http"
    assert forward.attributes["relay.connection"] == "orders" and forward.attributes["http.response.status_code"] == 201
    assert request.attributes["url.full"].endswith("/orders/items")  # no query: it may carry secrets
    # the Relay token for this call: fetched from the (emulated) managed identity endpoint inside the relay request
    [token] = [s for s in receiver.named(tracing.TOKEN_ACQUISITION, APP_SERVICE) if s.trace_id == trace_id]
    assert token.parent_span_id == request.span_id and token.attributes["relay.token.cache_hit"] is False
    assert token.attributes["relay.credential"] == "entra"


async def test_a_relay_outbound_envelope_with_traceparent_is_one_trace_through_the_queue_function(
        traced_stack, agent, receiver, local_service, azurite):
    _, seen = local_service
    LOCAL_SPANS.clear()
    with TRACER.start_as_current_span("enqueue", kind=SpanKind.PRODUCER) as producer:
        trace_headers: dict[str, str] = {}
        propagate.inject(trace_headers)
        envelope = {"id": "trace-e2e-1", "connection": ONPREM, "path": "/orders/9", "method": "PUT",
                    "headers": {"Content-Type": "application/json", **trace_headers}, "body": "{\"n\": 9}"}
        await Queues(azurite.connection_string).send("relay-outbound", json.dumps(envelope))
    trace_id, producer_id = hexids(producer)

    def exported():
        return [s for s in receiver.named(tracing.AGENT_FORWARD, AGENT_SERVICE) if s.trace_id == trace_id]
    [forward] = await wait_until(exported, 30, "the agent's forward span of the queued envelope")
    await wait_until(lambda: [s for s in receiver.named(tracing.RELAY_REQUEST, APP_SERVICE) if s.trace_id == trace_id],
                     30, "the app's relay request span of the queued envelope")
    [invocation] = [s for s in receiver.named(tracing.FUNCTION_INVOCATION, APP_SERVICE) if s.trace_id == trace_id]
    [request] = [s for s in receiver.named(tracing.RELAY_REQUEST, APP_SERVICE) if s.trace_id == trace_id]
    [local] = [s for s in LOCAL_SPANS.get_finished_spans() if s.name == "local service"]
    assert invocation.parent_span_id == producer_id and invocation.kind == PbSpan.SPAN_KIND_CONSUMER
    assert invocation.attributes["faas.name"] == "relay_queue_send"
    assert request.parent_span_id == invocation.span_id and forward.parent_span_id == request.span_id
    assert hexids(local)[0] == trace_id and f"{local.parent.span_id:016x}" == forward.span_id
    assert seen[-1]["path"] == "/orders/9" and seen[-1]["body"] == b'{"n": 9}'


async def test_an_inbound_message_stored_by_the_durable_listener_carries_a_traceparent_a_consumer_continues(
        traced_stack, receiver, emulator, azurite):
    async with aiohttp.ClientSession() as http:
        await start_listener(traced_stack, http)
    with TRACER.start_as_current_span("sender", kind=SpanKind.CLIENT) as sender:
        headers = {"Content-Type": "text/plain"}
        propagate.inject(headers)
    trace_id, sender_id = hexids(sender)
    async with inbound_sender(emulator) as client:
        ack, _ = await post_inbound(client, "/misc", b"traced inbound", headers)
    [message] = [json.loads(m) for m in await drain_queue(azurite.connection_string, INBOUND_DEFAULT_QUEUE, expect=1, timeout=15)]
    assert message["id"] == ack["id"]

    def store_exported():
        return [s for s in receiver.named(tracing.QUEUE_STORE, APP_SERVICE) if s.trace_id == trace_id]
    [store] = await wait_until(store_exported, 30, "the queue store span at the OTLP receiver")
    assert store.parent_span_id == sender_id
    assert message["traceparent"].split("-")[1:3] == [trace_id, store.span_id]

    # A consumer continues the trace from the message's own field.
    with TRACER.start_as_current_span("consume", context=tracing.extract(message), kind=SpanKind.CONSUMER) as consume:
        pass
    assert hexids(consume)[0] == trace_id
    assert f"{consume.parent.span_id:016x}" == store.span_id

