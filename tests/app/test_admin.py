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
