"""One trace from the caller through Relay to the agent and on to the local service (W3C trace context).

The agent runs in this process (``relay.agent.Agent``) so that one OpenTelemetry SDK provider
with an in-memory exporter sees every span: the caller's ``relay request`` (CLIENT), the agent's
``agent forward`` (SERVER), and the local service's own span, made from the ``traceparent`` it
received. Relay in between is the real emulator.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from relay import AzureNamedKeyCredential, HybridConnectionClient, tracing
from relay.agent import Agent, load_config

from .agent_helpers import toml_str
from .conftest import REPO_ROOT, ROOT_RULE, dev_connection_string

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def sdk_provider():
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "another test installed a non-SDK tracer provider"
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    yield
    EXPORTER.clear()


async def traced_local_service():
    """A local service that continues the trace it is given, as an instrumented service would."""
    service_tracer = trace.get_tracer("local-service")

    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = propagate.extract(dict(request.headers))
        with service_tracer.start_as_current_span("local service", context=ctx, kind=SpanKind.SERVER):
            if request.headers.get("Upgrade", "").lower() == "websocket":
                ws = web.WebSocketResponse()
                await ws.prepare(request)
                async for msg in ws:
                    await ws.send_str("echo:" + msg.data)
                return ws
            return web.Response(text="traced " + request.headers.get("traceparent", "none"))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def test_one_trace_from_caller_through_relay_and_agent_to_local_service(emulator, tmp_path):
    runner, port = await traced_local_service()
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[[connections]]
name = "orders"
target = "http://127.0.0.1:{port}/svc/"
[connections.credential]
type = "connection_string"
connection_string_env = "TRACE_ORDERS_CS"
""")
    agent = Agent(load_config(str(path), {"TRACE_ORDERS_CS": dev_connection_string(emulator, "orders")}))
    await agent.start()
    try:
        async with asyncio.timeout(30):
            while not agent.readiness()[0]:
                await asyncio.sleep(0.05)
        EXPORTER.clear()
        key = AzureNamedKeyCredential(ROOT_RULE, emulator.sas_key(ROOT_RULE))
        async with HybridConnectionClient(emulator.address("orders"), key, connection_verify=emulator.ca_cert) as client:
            with tracing.relay_request("GET", client.address, "/items?x=1") as trace_headers:
                assert set(trace_headers) == {"traceparent"}
                resp = await client.request("GET", "/items?x=1", headers=trace_headers)
                assert resp.status == 200
                body = await resp.text()
            with tracing.span(tracing.RELAY_CONNECT, kind=SpanKind.CLIENT):
                async with await client.connect(path="/ws", headers=tracing.inject()) as stream:
                    await stream.send("hi")
                    assert await stream.receive() == "echo:hi"
    finally:
        await agent.stop()
        await runner.cleanup()

    spans = EXPORTER.get_finished_spans()
    by_name: dict[str, list] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    (request_span,) = by_name[tracing.RELAY_REQUEST]
    (connect_span,) = by_name[tracing.RELAY_CONNECT]
    http_forward, ws_forward = sorted(by_name[tracing.AGENT_FORWARD], key=lambda s: bool(s.attributes.get("relay.websocket")))
    http_local, ws_local = sorted(by_name["local service"], key=lambda s: s.start_time)

    # HTTP: caller -> (Relay) -> agent forward -> local service, one trace, each the parent of the next.
    assert request_span.kind == SpanKind.CLIENT and http_forward.kind == SpanKind.SERVER
    trace_id = request_span.context.trace_id
    assert http_forward.context.trace_id == trace_id and http_local.context.trace_id == trace_id
    assert http_forward.parent.span_id == request_span.context.span_id
    assert http_local.parent.span_id == http_forward.context.span_id
    assert http_forward.attributes["http.response.status_code"] == 200
    assert http_forward.attributes["relay.connection"] == "orders" and http_forward.attributes["relay.request_id"]
    # The local service saw the agent's span as its parent, not the caller's.
    assert f"{http_forward.context.span_id:016x}" in body and f"{request_span.context.span_id:016x}" not in body

    # WebSocket: the same chain.
    assert ws_forward.context.trace_id == connect_span.context.trace_id == ws_local.context.trace_id
    assert ws_forward.parent.span_id == connect_span.context.span_id
    assert ws_local.parent.span_id == ws_forward.context.span_id
    assert {s.context.trace_id for s in spans} == {trace_id, connect_span.context.trace_id}


def test_without_a_provider_tracing_is_a_no_op():
    """No SDK configured: no trace headers are sent and spans are non-recording."""
    code = (
        "from relay import tracing\n"
        "with tracing.relay_request('GET', 'sb://h/e') as headers:\n"
        "    assert headers == {}, headers\n"
        "with tracing.span('x') as s:\n"
        "    assert not s.is_recording()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO_ROOT),
                         env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


async def test_agent_console_exporter_prints_agent_forward_spans(emulator, tmp_path):
    """``[tracing] exporter = "console"`` in a real agent process: the forward span appears on stdout."""
    from .conftest import local_service

    async with local_service("svc") as svc:
        path = tmp_path / "agent.toml"
        path.write_text(f"""
[health]
enabled = true
port = 0
[tracing]
exporter = "console"
service_name = "agent-under-test"
[[connections]]
name = "orders"
target = {toml_str(svc.url)}
[connections.credential]
type = "connection_string"
connection_string_env = "TRACE_ORDERS_CS"
""")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "agent", "--config", str(path), "--log-format", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(REPO_ROOT),
            env={**os.environ, "TRACE_ORDERS_CS": dev_connection_string(emulator, "orders")},
        )
        from .agent_helpers import AgentProcess

        agent = AgentProcess(proc)
        await agent.wait_log(lambda r: r.get("event") == "online")
        key = AzureNamedKeyCredential(ROOT_RULE, emulator.sas_key(ROOT_RULE))
        async with HybridConnectionClient(emulator.address("orders"), key, connection_verify=emulator.ca_cert) as client:
            traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            assert (await client.request("GET", "/x", headers={"traceparent": traceparent})).status == 200
        record = await agent.wait_log(lambda r: r.get("event") == "request")
        assert record["trace_id"] == "0af7651916cd43dd8448eb211c80319c"  # the log line names the caller's trace
        proc.send_signal(15)
        out = await asyncio.wait_for(proc.stdout.read(), 30)
        assert await agent.wait_exit() == 0
        text = out.decode()
        assert '"name": "agent forward"' in text and "0x0af7651916cd43dd8448eb211c80319c" in text
        assert "agent-under-test" in text
        assert svc.seen == ["/x"]


def test_otlp_without_its_package_is_refused_with_the_package_named(tmp_path):
    from relay.agent.config import ConfigError, tracing_unavailable

    problem = tracing_unavailable("otlp")
    path = tmp_path / "agent.toml"
    path.write_text('[tracing]\nexporter = "otlp"\n[[connections]]\naddress = "sb://h.servicebus.windows.net/x"\n'
                    'target = "http://127.0.0.1:1"\n')
    if problem is None:  # the exporter is installed here: then the file is fine
        load_config(str(path), {})
        return
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert "tracing.exporter" in str(info.value) and "opentelemetry-exporter-otlp-proto-http" in str(info.value)



# -- the app's half: caller -> function invocation -> relay request -> agent -> local service; inbound messages ---------

from tests.app.conftest import bridge_env, clear_queue, drain_queue  # noqa: E402,F401  (fixtures and helpers of the app tests)


async def test_one_trace_from_a_function_call_through_the_bridge_and_agent(emulator, bridge_env, tmp_path):  # noqa: F811
    import azure.functions as func

    from bridge.http_send import relay_send

    runner, port = await traced_local_service()
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[[connections]]
name = "orders"
target = "http://127.0.0.1:{port}"
[connections.credential]
type = "connection_string"
connection_string_env = "TRACE_ORDERS_CS"
""")
    agent = Agent(load_config(str(path), {"TRACE_ORDERS_CS": dev_connection_string(emulator, "orders")}))
    await agent.start()
    caller_tracer = trace.get_tracer("caller")
    try:
        async with asyncio.timeout(30):
            while not agent.readiness()[0]:
                await asyncio.sleep(0.05)
        EXPORTER.clear()
        with caller_tracer.start_as_current_span("caller", kind=SpanKind.CLIENT) as caller:
            headers = {"Content-Type": "text/plain"}
            propagate.inject(headers)
        req = func.HttpRequest("POST", "http://localhost/api/relay/orders/items", headers=headers, params={},
                               route_params={"connection": "orders", "path": "items"}, body=b"x")
        resp = await relay_send(req)
        assert resp.status_code == 200, resp.get_body()
    finally:
        await agent.stop()
        await runner.cleanup()

    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    chain = [spans["caller"], spans[tracing.FUNCTION_INVOCATION], spans[tracing.RELAY_REQUEST], spans[tracing.AGENT_FORWARD],
             spans["local service"]]
    assert {s.context.trace_id for s in chain} == {caller.get_span_context().trace_id}
    for parent, child in zip(chain, chain[1:]):
        assert child.parent.span_id == parent.context.span_id, (parent.name, child.name)


async def test_inbound_messages_carry_traceparent_and_a_consumer_continues_the_trace(emulator, azurite, bridge_env):  # noqa: F811
    import json

    from bridge import listener
    from bridge.settings import get_settings

    await clear_queue(azurite.connection_string, "app-inbound")
    EXPORTER.clear()
    window = asyncio.ensure_future(listener.run_window(get_settings(), "inbound", 4.0))
    sender_tracer = trace.get_tracer("sender")
    key = AzureNamedKeyCredential(ROOT_RULE, emulator.sas_key(ROOT_RULE))
    async with HybridConnectionClient(emulator.address("inbound"), key, connection_verify=emulator.ca_cert) as client:
        with sender_tracer.start_as_current_span("sender", kind=SpanKind.CLIENT) as sender:
            headers = tracing.inject()
        async with asyncio.timeout(20):
            while True:
                try:
                    resp = await client.request("POST", "/misc", body=b"hello", headers=headers)
                    break
                except Exception:  # the window is not online yet
                    await asyncio.sleep(0.1)
        assert resp.status == 202
        with sender_tracer.start_as_current_span("ws sender", kind=SpanKind.CLIENT) as ws_sender:
            async with await client.connect(path="/chat", headers=tracing.inject()) as stream:
                await stream.send("over ws")
                await stream.shutdown()
                await stream.receive()
    await window
    message, ws_message = [json.loads(m) for m in await drain_queue(azurite.connection_string, "app-inbound", expect=2)]
    assert ws_message["kind"] == "websocket"
    assert ws_message["traceparent"].split("-")[1] == f"{ws_sender.get_span_context().trace_id:032x}"
    store = next(s for s in EXPORTER.get_finished_spans() if s.name == tracing.QUEUE_STORE
                 and s.context.trace_id == sender.get_span_context().trace_id)
    assert store.parent.span_id == sender.get_span_context().span_id
    assert message["traceparent"].split("-")[1:3] == [f"{store.context.trace_id:032x}", f"{store.context.span_id:016x}"]
    # A consumer of the queue continues the same trace from the message's field.
    with trace.get_tracer("consumer").start_as_current_span("consume", context=tracing.extract(message)) as consume:
        pass
    assert consume.get_span_context().trace_id == sender.get_span_context().trace_id
    consumed = next(s for s in EXPORTER.get_finished_spans() if s.name == "consume")
    assert consumed.parent.span_id == store.context.span_id


def test_without_a_provider_an_incoming_traceparent_passes_on_unchanged():
    code = (
        "from relay import tracing\n"
        "from opentelemetry.trace import SpanKind\n"
        "incoming = {'Traceparent': '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', 'tracestate': 'a=1'}\n"
        "with tracing.span('agent forward', kind=SpanKind.SERVER, context=tracing.extract(incoming)):\n"
        "    out = {'X-Other': '1', 'traceparent': 'stale'}\n"
        "    tracing.inject(out)\n"
        "assert out == {'X-Other': '1', 'traceparent': incoming['Traceparent'], 'tracestate': 'a=1'}, out\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO_ROOT),
                         env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


# -- the remaining spans: token acquisition, the queue function, the listener window, claim-check upload, TrackingId ----

async def test_token_acquisition_spans_say_whether_the_cache_answered(emulator):
    from relay.credentials import TokenProvider

    provider = TokenProvider(AzureNamedKeyCredential(ROOT_RULE, emulator.sas_key(ROOT_RULE)))
    EXPORTER.clear()
    with trace.get_tracer("caller").start_as_current_span("caller") as caller:
        first = await provider.get_token(emulator.address("orders"))
        second = await provider.get_token(emulator.address("orders"))
    assert first is second and provider.fetch_count == 1
    fetch, hit = [s for s in EXPORTER.get_finished_spans() if s.name == tracing.TOKEN_ACQUISITION]
    assert fetch.attributes["relay.token.cache_hit"] is False and hit.attributes["relay.token.cache_hit"] is True
    assert fetch.attributes["relay.credential"] == "sas-key"
    assert fetch.parent.span_id == hit.parent.span_id == caller.get_span_context().span_id
    assert not any(first.token in str(v) for s in (fetch, hit) for v in s.attributes.values())  # never the token


async def test_a_relay_outbound_envelope_with_traceparent_continues_into_the_relay_request(emulator, bridge_env, tmp_path):  # noqa: F811
    import json

    from bridge.outbound import process_outbound
    from bridge.settings import get_settings

    runner, port = await traced_local_service()
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[[connections]]
name = "orders"
target = "http://127.0.0.1:{port}"
[connections.credential]
type = "connection_string"
connection_string_env = "TRACE_ORDERS_CS"
""")
    agent = Agent(load_config(str(path), {"TRACE_ORDERS_CS": dev_connection_string(emulator, "orders")}))
    await agent.start()
    try:
        async with asyncio.timeout(30):
            while not agent.readiness()[0]:
                await asyncio.sleep(0.05)
        EXPORTER.clear()
        with trace.get_tracer("producer").start_as_current_span("enqueue", kind=SpanKind.PRODUCER) as producer:
            trace_headers = tracing.inject()
        envelope = {"id": "order-7", "connection": "orders", "path": "/orders/7", "method": "PUT",
                    "headers": {"Content-Type": "application/json", **trace_headers}, "body": "{}"}
        outcome = await process_outbound(get_settings(), json.dumps(envelope).encode(), message_id="m-1", dequeue_count=1)
        assert outcome.result == "delivered", outcome
    finally:
        await agent.stop()
        await runner.cleanup()

    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    invocation = spans[tracing.FUNCTION_INVOCATION]
    assert invocation.kind == SpanKind.CONSUMER and invocation.attributes["faas.name"] == "relay_queue_send"
    chain = [spans["enqueue"], invocation, spans[tracing.RELAY_REQUEST], spans[tracing.AGENT_FORWARD], spans["local service"]]
    assert {s.context.trace_id for s in chain} == {producer.get_span_context().trace_id}
    for parent, child in zip(chain, chain[1:]):
        assert child.parent.span_id == parent.context.span_id, (parent.name, child.name)


async def test_listener_window_and_claim_check_upload_spans(emulator, azurite, bridge_env):  # noqa: F811
    from bridge import listener
    from bridge.settings import get_settings

    await clear_queue(azurite.connection_string, "app-inbound")
    EXPORTER.clear()
    window = asyncio.ensure_future(listener.run_window(get_settings(), "inbound", 4.0, window_id="w-trace"))
    key = AzureNamedKeyCredential(ROOT_RULE, emulator.sas_key(ROOT_RULE))
    big = os.urandom(100 * 1024)  # over the queue's 48 KiB: a claim-check blob
    async with HybridConnectionClient(emulator.address("inbound"), key, connection_verify=emulator.ca_cert) as client:
        with trace.get_tracer("sender").start_as_current_span("sender", kind=SpanKind.CLIENT) as sender:
            headers = {"Content-Type": "application/octet-stream", **tracing.inject()}
        async with asyncio.timeout(20):
            while True:
                try:
                    resp = await client.request("POST", "/misc", body=big, headers=headers)
                    break
                except Exception:  # the window is not online yet
                    await asyncio.sleep(0.1)
        assert resp.status == 202
    counts = await window
    assert counts.claimChecked == 1
    [message] = await drain_queue(azurite.connection_string, "app-inbound", expect=1)
    spans = EXPORTER.get_finished_spans()
    store = next(s for s in spans if s.name == tracing.QUEUE_STORE and s.context.trace_id == sender.get_span_context().trace_id)
    [upload] = [s for s in spans if s.name == tracing.CLAIM_CHECK_UPLOAD]
    assert upload.parent.span_id == store.context.span_id and upload.context.trace_id == store.context.trace_id
    assert upload.attributes["relay.claim_check.size"] == len(big)
    assert upload.attributes["relay.claim_check.blob"] in message
    [window_span] = [s for s in spans if s.name == tracing.LISTENER_WINDOW]
    assert window_span.parent is None  # a root: the messages continue their senders' traces, not the window's
    assert window_span.attributes["relay.connection"] == "inbound" and window_span.attributes["relay.window_id"] == "w-trace"
    assert window_span.attributes["relay.window.stored"] == 1 and window_span.attributes["relay.window.claimChecked"] == 1
    assert window_span.status.is_ok


async def test_relay_request_span_names_the_relays_tracking_id_on_errors(emulator):
    from opentelemetry.trace import StatusCode

    from relay.errors import RelayError

    key = AzureNamedKeyCredential(ROOT_RULE, emulator.sas_key(ROOT_RULE))
    EXPORTER.clear()
    async with HybridConnectionClient(emulator.address("no-such-entity"), key, connection_verify=emulator.ca_cert) as client:
        with pytest.raises(RelayError) as info:
            with tracing.relay_request("GET", client.address, "/x") as trace_headers:
                await client.request("GET", "/x", headers=trace_headers)
    assert info.value.tracking_id
    [span] = [s for s in EXPORTER.get_finished_spans() if s.name == tracing.RELAY_REQUEST]
    assert span.attributes["relay.tracking_id"] == info.value.tracking_id
    assert span.status.status_code == StatusCode.ERROR


# -- bridge/telemetry.py: which exporter the Functions app installs ------------------------------------------------------

def _app_telemetry(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO_ROOT),
                          env={**base, **env}, timeout=60)


def test_app_telemetry_without_settings_installs_nothing_and_imports_no_sdk():
    out = _app_telemetry({}, "import sys\nfrom bridge import telemetry\nprint(telemetry.configure())\n"
                             "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'azure.monitor'))))\n")
    assert out.stdout.split("\n")[:2] == ["none", "[]"], out.stderr


def test_app_telemetry_with_an_otlp_endpoint_installs_the_sdk_with_the_otlp_exporter():
    code = ("from opentelemetry import trace\nfrom bridge import telemetry\nprint(telemetry.configure())\n"
            "p = trace.get_tracer_provider()\n"
            "print(type(p).__name__, p.resource.attributes['service.name'])\n"
            "print(type(p._active_span_processor._span_processors[0].span_exporter).__name__)\n"
            "telemetry.shutdown()\n")
    out = _app_telemetry({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces", "OTEL_SERVICE_NAME": "bridge-x"}, code)
    assert out.stdout.split("\n")[:3] == ["otlp", "TracerProvider bridge-x", "OTLPSpanExporter"], out.stderr


def test_app_telemetry_with_application_insights_uses_the_distro_with_the_managed_identity():
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                                                    "IngestionEndpoint=http://127.0.0.1:9/",
           "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "ClientId=11111111-2222-3333-4444-555555555555;Authorization=AAD"}
    code = ("import logging\nlogging.basicConfig()\nfrom bridge import telemetry\nprint(telemetry.configure(), flush=True)\n"
            "from opentelemetry import trace\n"
            "p = trace.get_tracer_provider()\n"
            "exporter = p._active_span_processor._span_processors[-1].span_exporter\n"
            "print(type(exporter).__name__, type(exporter._credential).__name__, flush=True)\n"
            "import os\nos._exit(0)\n")  # no export attempt at exit
    out = _app_telemetry(env, code)
    assert out.stdout.split("\n")[:2] == ["azure-monitor", "AzureMonitorTraceExporter ManagedIdentityCredential"], out.stderr


def test_app_telemetry_reads_the_entra_setting_as_infra_writes_it():
    from bridge.telemetry import entra_client_id

    assert entra_client_id("Authorization=AAD") == (True, None)
    assert entra_client_id("ClientId=11111111-2222-3333-4444-555555555555;Authorization=AAD") == (
        True, "11111111-2222-3333-4444-555555555555")
    assert entra_client_id(None) == (False, None)
    assert entra_client_id("") == (False, None)
