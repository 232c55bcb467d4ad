"""The singleton starter and the admin routes, with a fake Durable client (real DurableOrchestrationStatus objects)."""

from __future__ import annotations

import json

import azure.durable_functions as df
import azure.functions as func
import pytest
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from azure.functions.timer import TimerRequest

from bridge import admin, supervisor

S = df.OrchestrationRuntimeStatus


class FakeClient:
    """Just the three calls the app makes, backed by a dict of instances."""

    def __init__(self, instances: dict[str, DurableOrchestrationStatus] | None = None):
        self.instances = instances or {}
        self.started: list[tuple[str, str, dict]] = []
        self.terminated: list[tuple[str, str]] = []

    async def get_status(self, instance_id):
        return self.instances.get(instance_id, DurableOrchestrationStatus())  # the SDK's "404" object is falsy

    async def start_new(self, name, instance_id=None, client_input=None):
        self.started.append((name, instance_id, client_input))
        self.instances[instance_id] = DurableOrchestrationStatus(runtimeStatus=S.Pending, instanceId=instance_id)
        return instance_id

    async def terminate(self, instance_id, reason):
        self.terminated.append((instance_id, reason))
        self.instances[instance_id] = DurableOrchestrationStatus(runtimeStatus=S.Terminated, output=reason)


def status(runtime, **kw):
    return DurableOrchestrationStatus(runtimeStatus=runtime, createdTime="2026-11-29T10:00:00.000000Z", **kw)


def raw(builder):
    return builder.build().get_user_function().client_function


@pytest.fixture
def env(bridge_env):
    bridge_env(RELAY_INBOUND_CONNECTIONS="inbound,orders/eu", LISTENER_WINDOW_SECONDS="120")


def test_instance_ids_are_fixed_and_valid():
    assert supervisor.instance_id("inbound") == "relay-listener-inbound"
    assert supervisor.instance_id("orders/eu") == "relay-listener-orders~eu"  # Durable ids may not contain '/'


@pytest.mark.parametrize(
    "existing, started",
    [(None, True), (S.Completed, True), (S.Failed, True), (S.Terminated, True), (S.Canceled, True),
     (S.Running, False), (S.Pending, False), (S.ContinuedAsNew, False), (S.Suspended, False)],
)
async def test_starter_restarts_only_dead_instances(env, existing, started):
    instances = {} if existing is None else {"relay-listener-inbound": status(existing),
                                              "relay-listener-orders~eu": status(S.Running)}
    client = FakeClient(instances)
    await raw(admin.listener_starter)(TimerRequest(past_due=False), client)
    names = [iid for _, iid, _ in client.started]
    expected = ["relay-listener-inbound"] if started else []
    if existing is None:
        expected.append("relay-listener-orders~eu")
    assert names == expected
    for name, _, inp in client.started:
        assert name == "listener_orchestrator"
        assert inp["windowSeconds"] == 120 and inp["overlapSeconds"] == supervisor.overlap_for(120)


async def test_stop_is_sticky_until_start(env):
    client = FakeClient({"relay-listener-inbound": status(S.Running)})
    req = func.HttpRequest("POST", "/api/listeners/stop/inbound", route_params={"connection": "inbound"}, body=b"")
    resp = await raw(admin.listener_stop)(req, client)
    assert resp.status_code == 202 and client.terminated == [("relay-listener-inbound", supervisor.STOP_REASON)]
    await raw(admin.listener_starter)(TimerRequest(), client)
    assert "relay-listener-inbound" not in [iid for _, iid, _ in client.started]  # the starter respects the stop
    again = await raw(admin.listener_stop)(req, client)
    assert again.status_code == 200 and json.loads(again.get_body())["result"] == "not-running"
    start = func.HttpRequest("POST", "/api/listeners/start/inbound", route_params={"connection": "inbound"}, body=b"")
    resp = await raw(admin.listener_start)(start, client)
    assert resp.status_code == 202 and json.loads(resp.get_body())["result"] == "started"
    resp = await raw(admin.listener_start)(start, client)
    assert resp.status_code == 200 and json.loads(resp.get_body())["result"] == "running"


async def test_status_route_and_unknown_connections(env):
    client = FakeClient({"relay-listener-inbound": status(S.Running, customStatus={"phase": "listening", "online": True})})
    resp = await raw(admin.listeners_status)(func.HttpRequest("GET", "/api/listeners", body=b""), client)
    listeners = json.loads(resp.get_body())["listeners"]
    assert [l["connection"] for l in listeners] == ["inbound", "orders/eu"]
    assert listeners[0]["runtimeStatus"] == "Running" and listeners[0]["customStatus"]["online"] is True
    assert listeners[1]["runtimeStatus"] is None
    for fn in (admin.listener_start, admin.listener_stop):
        req = func.HttpRequest("POST", "/api/listeners/x/nope", route_params={"connection": "nope"}, body=b"")
        resp = await raw(fn)(req, client)
        assert resp.status_code == 404 and "RELAY_INBOUND_CONNECTIONS" in json.loads(resp.get_body())["message"]
    req = func.HttpRequest("POST", "/api/listeners/start/orders/eu", route_params={"connection": "orders/eu"}, body=b"")
    assert (await raw(admin.listener_start)(req, client)).status_code == 202


# ---- instance ids, scale-out (RELAY_LISTENERS_PER_CONNECTION), live status ---------------------------
def test_long_connection_names_get_short_distinct_instance_ids():
    assert supervisor.instance_id("inbound", 2) == "relay-listener-inbound@2"
    long_a, long_b = "a" * 200 + "/x", "a" * 200 + "/y"
    ids = {supervisor.instance_id(name, n) for name in (long_a, long_b) for n in (1, 2, 25)}
    assert len(ids) == 6 and all(len(i) <= supervisor.MAX_INSTANCE_ID for i in ids)
    assert all(i.startswith("relay-listener-aaaa") and "/" not in i for i in ids)
    name = "b" * (supervisor.MAX_INSTANCE_ID - len(supervisor.INSTANCE_PREFIX))
    assert supervisor.instance_id(name) == supervisor.INSTANCE_PREFIX + name  # exactly at the limit: unchanged


def test_overlap_follows_the_queue_polling_rule():
    for polling in (1, 5, 10, 30):
        for window in (60, 120, 300, 600, 1500):
            overlap = supervisor.overlap_for(window, polling)
            assert overlap < window / 2  # at most two windows at once; a carry reports before the next ends
            if window // 3 > 2 * polling + supervisor.ACTIVITY_START_SECONDS:
                assert overlap > 2 * polling + supervisor.ACTIVITY_START_SECONDS
    assert supervisor.overlap_for(300, 10) == 30 and supervisor.overlap_for(300, 30) == 66


def test_listeners_per_connection_setting(bridge_env):
    from bridge.settings import SettingsError, load_settings
    import os
    assert load_settings(os.environ).listeners_per_connection == 1
    assert load_settings({**os.environ, "RELAY_LISTENERS_PER_CONNECTION": "25"}).listeners_per_connection == 25
    for bad in ("0", "26", "two"):
        with pytest.raises(SettingsError, match="RELAY_LISTENERS_PER_CONNECTION"):
            load_settings({**os.environ, "RELAY_LISTENERS_PER_CONNECTION": bad})


async def test_scaling_listeners_up_and_down(bridge_env):
    bridge_env(RELAY_INBOUND_CONNECTIONS="inbound", RELAY_LISTENERS_PER_CONNECTION="3")
    client = FakeClient({"relay-listener-inbound": status(S.Running)})
    await raw(admin.listener_starter)(TimerRequest(), client)
    assert [iid for _, iid, _ in client.started] == ["relay-listener-inbound@2", "relay-listener-inbound@3"]
    assert [inp["listener"] for _, _, inp in client.started] == [2, 3]
    for iid in ("relay-listener-inbound@2", "relay-listener-inbound@3"):
        client.instances[iid] = status(S.Running)
    bridge_env(RELAY_INBOUND_CONNECTIONS="inbound", RELAY_LISTENERS_PER_CONNECTION="1")
    await raw(admin.listener_starter)(TimerRequest(), client)
    assert client.terminated == [("relay-listener-inbound@2", supervisor.SCALE_DOWN_REASON),
                                 ("relay-listener-inbound@3", supervisor.SCALE_DOWN_REASON)]
    assert client.instances["relay-listener-inbound"].runtime_status == S.Running  # listener 1 untouched
    # the admin stop route stops every listener of the connection, start brings back K of them
    bridge_env(RELAY_INBOUND_CONNECTIONS="inbound", RELAY_LISTENERS_PER_CONNECTION="2")
    await raw(admin.listener_starter)(TimerRequest(), client)
    req = func.HttpRequest("POST", "/api/listeners/stop/inbound", route_params={"connection": "inbound"}, body=b"")
    resp = await raw(admin.listener_stop)(req, client)
    assert json.loads(resp.get_body())["instanceIds"] == ["relay-listener-inbound", "relay-listener-inbound@2"]


def test_live_state_counts_only_fresh_heartbeats():
    from datetime import datetime, timedelta, timezone
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)

    def beat(window_id, age, stored, online=True):
        return {"windowId": window_id, "online": online, "stored": stored, "httpRequests": stored,
                "updatedAt": (now - timedelta(seconds=age)).isoformat().replace("+00:00", "Z")}

    state = admin.live_state([beat("g3-a", 1, 5), beat("g3-b", 2, 1), beat("g1-a", 600, 9)], now=now)
    assert state["online"] is True and state["counts"]["stored"] == 6
    assert [w["stale"] for w in state["windows"]] == [False, False, True]
    assert admin.live_state([beat("g1-a", 600, 9)], now=now)["online"] is False
    assert admin.live_state([], "ServiceRequestError: down", now=now) == {
        "online": False, "windows": [], "counts": dict.fromkeys(admin._LIVE_KEYS, 0),
        "heartbeatSeconds": admin.HEARTBEAT_SECONDS, "error": "ServiceRequestError: down"}


async def test_status_route_shows_a_running_window_online_with_live_counts(emulator, azurite, bridge_env, app_functions):
    """A real window (emulator + Azurite): the status route sees it online and counting long before it ends."""
    import asyncio

    from bridge import listener
    from relay.client import HybridConnectionClient

    from .conftest import clear_queue, root_credential

    bridge_env(RELAY_INBOUND_CONNECTIONS="inbound", INBOUND_DEFAULT_QUEUE="admin-live-in")
    await clear_queue(azurite.connection_string, "admin-live-in")
    client = FakeClient({"relay-listener-inbound": status(S.Running, customStatus={
        "phase": "listening", "lastWindow": {"windowId": "g6-a", "ok": True, "stored": 3}})})
    route = raw(admin.listeners_status)

    async def live():
        resp = await route(func.HttpRequest("GET", "/api/listeners", body=b""), client)
        [entry] = json.loads(resp.get_body())["listeners"]
        return entry

    activity = app_functions["listener_window"].get_user_function()
    window = asyncio.create_task(activity({"connection": "inbound", "seconds": 30, "windowId": "g7-a", "report": False}))
    try:
        entry = await live()
        for _ in range(100):  # online as soon as the listener is connected (heartbeat written on going online)
            if entry["online"]:
                break
            await asyncio.sleep(0.1)
            entry = await live()
        assert entry["online"] is True and entry["live"]["windows"][0]["windowId"] == "g7-a"
        assert entry["lastWindow"]["windowId"] == "g6-a"  # the last finished window, from the custom status
        async with HybridConnectionClient(emulator.address("inbound"), root_credential(emulator),
                                          connection_verify=emulator.ca_cert) as sender:
            async with await sender.request("POST", "/x", body=b"hello") as response:
                assert response.status == 202
        for _ in range(int(4 * listener.HEARTBEAT_SECONDS / 0.2)):  # counts reach the status within a heartbeat
            entry = await live()
            if entry["live"]["counts"]["stored"] == 1:
                break
            await asyncio.sleep(0.2)
        assert entry["live"]["counts"]["stored"] == 1 and entry["live"]["counts"]["httpRequests"] == 1
    finally:
        window.cancel()
        await asyncio.gather(window, return_exceptions=True)
