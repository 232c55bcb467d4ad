"""The per-process caches on the relay_send hot path give the same answers as computing afresh:
settings re-validated exactly when a watched variable changes, header verdicts and accepted
targets remembered per exact input (bounded), no-op tracing skipped only when it adds nothing."""

from __future__ import annotations

import os
import sys

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import bridge.headers as headers
import bridge.sender as sender
import bridge.settings as settings
from bridge.sender import SendFailure, resolve_target, tracing_idle
from bridge.settings import SettingsError, get_settings

BASE = {
    "RELAY_NAMESPACE": "contoso.servicebus.windows.net",
    "RELAY_OUTBOUND_CONNECTIONS": "orders,orders/eu",
    "BridgeStorage": "UseDevelopmentStorage=true",
}


@pytest.fixture
def app_settings(monkeypatch):
    for name in settings.SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(settings, "_cached", None)
    yield monkeypatch
    settings._cached = None


def test_settings_validated_once_while_the_environment_is_unchanged(app_settings):
    first = get_settings()
    app_settings.setenv("SOME_OTHER_VARIABLE", "x")  # not a setting the app reads
    assert get_settings() is first


def test_settings_follow_every_kind_of_change(app_settings):
    first = get_settings()
    app_settings.setenv("RELAY_OUTBOUND_CONNECTIONS", "billing")  # changed value
    changed = get_settings()
    assert changed is not first and changed.outbound_connections == ("billing",)
    app_settings.setenv("RELAY_CLIENT_ID", "00000000-0000-0000-0000-000000000001")  # newly set
    assert get_settings().relay_client_id == "00000000-0000-0000-0000-000000000001"
    app_settings.delenv("RELAY_CLIENT_ID")  # removed
    assert get_settings().relay_client_id is None
    os.environ["LISTENER_WINDOW_SECONDS"] = "1"  # set directly, now invalid: the error is raised, not a stale value
    try:
        with pytest.raises(SettingsError, match="LISTENER_WINDOW_SECONDS"):
            get_settings()
    finally:
        del os.environ["LISTENER_WINDOW_SECONDS"]
    assert get_settings().listener_window_seconds == settings.DEFAULT_LISTENER_WINDOW


def test_settings_read_a_replaced_environment_mapping(app_settings):
    get_settings()
    app_settings.setattr(os, "environ", {**BASE, "RELAY_OUTBOUND_CONNECTIONS": "elsewhere"})
    assert get_settings().outbound_connections == ("elsewhere",)


@pytest.mark.skipif(sys.platform == "win32", reason="os.environ's store is keyed by upper-case str there")
def test_settings_fingerprint_matches_a_plain_read(app_settings):
    app_settings.setenv("INBOUND_ROUTES", "[]")
    expected = tuple(os.environ.get(name) for name in settings.SETTING_NAMES)
    fingerprint = settings._watched_values()
    assert tuple(None if v is None else os.fsdecode(v) for v in fingerprint) == expected


@pytest.mark.parametrize("filter_, cache", [
    (headers.request_headers, headers._request_verdicts),
    (headers.response_headers, headers._response_verdicts),
])
def test_header_verdicts_are_the_same_remembered_or_not(filter_, cache):
    names = ["Content-Type", "content-type", "Authorization", "X-Api-Key", "X-Custom", "x-ms-client-principal",
             "Cookie", "Idempotency-Key", "traceparent", "ETag", "X-Relay-Mode", "Accept", "X-Functions-Key", "Host"]
    given = [(name, f"value of {name}") for name in names]
    cache.clear()
    fresh = filter_(given)
    assert filter_(given) == fresh  # the second call answers from the remembered verdicts
    assert "Authorization" not in fresh and "X-Api-Key" not in fresh and "Cookie" not in fresh
    assert "X-Relay-Mode" not in fresh and "x-ms-client-principal" not in fresh and "Host" not in fresh


def test_header_verdicts_are_bounded():
    headers._request_verdicts.clear()
    for i in range(headers._MAX_REMEMBERED + 10):
        headers.request_headers({f"X-Name-{i}": "v"})
    assert len(headers._request_verdicts) <= headers._MAX_REMEMBERED
    assert headers.request_headers({"X-Secret-Thing": "v", "X-Name-1": "v"}) == {"X-Name-1": "v"}


def test_targets_remembered_per_text_and_allow_list(app_settings):
    sender._targets.clear()
    s = get_settings()
    first = resolve_target(s, "/orders/eu/x?a=1")
    assert first == ("orders/eu", first[1]) and first[1].target == "/x?a=1"
    assert resolve_target(s, "/orders/eu/x?a=1") is first
    app_settings.setenv("RELAY_OUTBOUND_CONNECTIONS", "orders")  # another allow-list: decided afresh
    name, rest = resolve_target(get_settings(), "/orders/eu/x?a=1")
    assert (name, rest.target) == ("orders", "/eu/x?a=1")


def test_refused_targets_are_refused_every_time(app_settings):
    sender._targets.clear()
    s = get_settings()
    for _ in range(2):
        with pytest.raises(SendFailure) as bad:
            resolve_target(s, "/orders/%2e%2e/admin")
        assert bad.value.status == 400
        with pytest.raises(SendFailure) as unknown:
            resolve_target(s, "/billing/x")
        assert unknown.value.status == 404
    assert not sender._targets


def test_targets_are_bounded(app_settings):
    sender._targets.clear()
    s = get_settings()
    for i in range(sender._MAX_TARGETS + 5):
        resolve_target(s, f"/orders/{i}")
    assert len(sender._targets) <= sender._MAX_TARGETS


def test_tracing_idle_only_without_a_provider_and_without_a_current_trace(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider

    # Whatever another test installed globally: decide with each kind of provider in turn.
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    assert tracing_idle()
    parent = SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(parent)):
        assert not tracing_idle()  # a continued trace: the traceparent must still be passed on
    assert tracing_idle()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: TracerProvider())
    assert not tracing_idle()  # a configured SDK records every span
