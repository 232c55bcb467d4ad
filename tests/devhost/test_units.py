"""devhost's pure parts: routes, host.json, schedules, keys, settings, queue encoding, episode decisions."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from datetime import datetime, timezone

import pytest

from devhost.durable import history as h
from devhost.durable.engine import decide
from devhost.durable.service import as_json_text
from devhost.durable.store import Instance
from devhost.hostconfig import load_host_config, parse_timespan
from devhost.http_host import RouteError, compile_route
from devhost.keys import load_keys
from devhost.ports import PortBusyError, ensure_free
from tests.devhost.helpers import REPO
from devhost.queues import decode_message, encode_message, resolve_connection
from devhost.settings import SettingsError, apply_values, resolve
from devhost.timers import Schedule


@pytest.mark.parametrize("template,path,expected", [
    ("relay/{connection}/{*path}", "relay/orders/a/b", {"connection": "orders", "path": "a/b"}),
    ("relay/{connection}/{*path}", "relay/orders", {"connection": "orders"}),
    ("relay/{connection}/{*path}", "relay", None),
    ("items/{id:int}", "items/12", {"id": "12"}),
    ("items/{id:int}", "items/x", None),
    ("Items/{id}", "items/x", {"id": "x"}),
    ("x/{opt?}", "x", {}),
    ("g/{g:guid}", "g/6f9619ff-8b86-d011-b42d-00cf4fc964ff", {"g": "6f9619ff-8b86-d011-b42d-00cf4fc964ff"}),
])
def test_route_templates(template, path, expected):
    pattern, _ = compile_route(template)
    m = pattern.fullmatch(path)
    assert (None if m is None else {k: v for k, v in m.groupdict().items() if v is not None}) == expected


def test_route_errors_and_order():
    with pytest.raises(RouteError):
        compile_route("a/{*rest}/b")
    literal, param, catch_all = (compile_route(t)[1] for t in ("listeners/start", "listeners/{x}", "{*all}"))
    assert sorted([catch_all, param, literal]) == [literal, param, catch_all]


def test_host_json_queues(tmp_path):
    (tmp_path / "host.json").write_text(json.dumps({"extensions": {
        "queues": {"batchSize": 64, "maxDequeueCount": 2, "visibilityTimeout": "00:00:30",
                   "maxPollingInterval": "00:00:02"}, "durableTask": {"hubName": "Hub"}}}))
    config = load_host_config(tmp_path)
    assert (config.queues.batch_size, config.queues.threshold, config.queues.max_dequeue_count) == (32, 16, 2)
    assert (config.queues.visibility_timeout, config.queues.max_polling_interval, config.hub_name) == (30, 2, "Hub")
    assert parse_timespan("1.02:03:04.5", 0) == 93784.5


def test_host_json_overridden_by_azurefunctionsjobhost_settings(tmp_path):
    """``AzureFunctionsJobHost__path__to__setting`` app settings win over host.json, case-insensitively."""
    (tmp_path / "host.json").write_text(json.dumps({"extensions": {
        "queues": {"maxDequeueCount": 5, "visibilityTimeout": "00:00:30"}, "http": {"routePrefix": "api"}}}))
    env = {"AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:01",
           "AZUREFUNCTIONSJOBHOST__Extensions__Queues__MaxDequeueCount": "3",
           "AzureFunctionsJobHost__extensions__durableTask__hubName": "Other",
           "AzureFunctionsJobHost__functionTimeout": "00:10:00",
           "Unrelated__extensions__queues__batchSize": "1"}
    config = load_host_config(tmp_path, env)
    assert (config.queues.visibility_timeout, config.queues.max_dequeue_count, config.queues.batch_size) == (1, 3, 16)
    assert (config.hub_name, config.function_timeout, config.route_prefix) == ("Other", 600, "api")
    assert config.raw["extensions"]["queues"]["maxDequeueCount"] == "3"  # the existing key, not a second one
    assert sorted(config.overrides) == ["Extensions.Queues.MaxDequeueCount", "extensions.durableTask.hubName",
                                        "extensions.queues.visibilityTimeout", "functionTimeout"]


def test_ncrontab_seconds_first_and_timespan():
    start = datetime(2026, 1, 1, 0, 0, 1, tzinfo=timezone.utc)
    assert Schedule("*/5 * * * * *").next_after(start) == start.replace(second=5)
    assert Schedule("0 */2 * * * *").next_after(start) == start.replace(minute=2, second=0)
    assert Schedule("00:00:10").next_after(start) == start.replace(second=11)
    with pytest.raises(ValueError):
        Schedule("*/5 * * * *")  # 5 fields: not NCRONTAB


def test_keys_levels_and_persistence(tmp_path):
    keys = load_keys(tmp_path, ["fn"])
    assert keys.authorize("anonymous", "fn", None)
    assert keys.authorize("function", "fn", keys.default_function_key)
    assert keys.authorize("function", "fn", keys.function_key("fn"))
    assert not keys.authorize("function", "fn", None) and not keys.authorize("function", "fn", "x")
    assert not keys.authorize("admin", "fn", keys.default_function_key)
    assert keys.authorize("admin", "fn", keys.master)
    assert load_keys(tmp_path, ["fn"]).master == keys.master
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0
    assert keys.master not in repr(keys)


def test_settings_env_wins_and_expressions():
    env = {"A": "from-env"}
    assert apply_values({"A": "file", "B": "file"}, env) == ["B"]
    assert env == {"A": "from-env", "B": "file"}
    assert resolve("%B%-poison", env) == "file-poison"
    with pytest.raises(SettingsError):
        resolve("%MISSING%", env)
    assert resolve_connection("", {"AzureWebJobsStorage": "conn"}) == "conn"
    assert resolve_connection("Bridge", {"Bridge": "c2"}) == "c2"


def test_queue_encoding_round_trip():
    [text] = encode_message("héllo", "base64")
    assert base64.b64decode(text).decode() == "héllo" and decode_message(text, "base64") == "héllo".encode()
    assert encode_message(["a", b"b"], "none") == ["a", "b"]
    assert json.loads(encode_message({"k": 1}, "none")[0]) == {"k": 1}


def test_client_inputs_become_json_text():
    assert as_json_text(json.dumps({"a": 1})) == '{"a": 1}'  # what the SDK posts (a JSON string of JSON)
    assert as_json_text({"a": 1}) == '{"a": 1}'  # what curl posts
    assert as_json_text("plain") == '"plain"' and as_json_text(None) is None


def _instance(**kw) -> Instance:
    return Instance("i", "orch", "e1", "Running", None, None, None, "t", "t", **kw)


def test_decide_schedules_new_actions_with_sequence_ids():
    history = [h.orchestrator_started(), h.execution_started("orch", None)]
    state = {"isDone": False, "customStatus": {"s": 1}, "actions": [[
        {"actionType": h.WHEN_ANY, "compoundActions": [
            {"actionType": h.CALL_ACTIVITY, "functionName": "work", "input": "1"},
            {"actionType": h.CREATE_TIMER, "fireAt": "2026-01-01T00:00:05.000000Z", "isCanceled": False}]},
        {"actionType": h.WAIT_FOR_EXTERNAL_EVENT, "externalEventName": "go"}]]}
    d = decide(_instance(), history, state, None)
    assert d.activities == [(0, "work", "1")] and d.timers == [(1, "2026-01-01T00:00:05.000000Z")]
    assert d.status == "Running" and d.custom_status == '{"s": 1}' and d.actions_seen == 3
    assert [e["EventType"] for e in d.history[2:]] == [h.ORCHESTRATOR_COMPLETED, h.TASK_SCHEDULED, h.TIMER_CREATED]
    # next episode: the timer was canceled, nothing new scheduled
    state["actions"][0][0]["compoundActions"][1]["isCanceled"] = True
    d2 = decide(_instance(actions_seen=3), d.history + [h.orchestrator_started()], state, None)
    assert d2.canceled_timers == [1] and not d2.activities and not d2.timers


def test_decide_continue_as_new_and_failure():
    history = [h.orchestrator_started(), h.execution_started("orch", None)]
    d = decide(_instance(), history, {"isDone": True, "actions": [[{"actionType": h.CONTINUE_AS_NEW,
                                                                     "input": '{"gen": 2}'}]]}, None)
    assert d.continued and d.continue_as_new == '{"gen": 2}'
    d = decide(_instance(), history, {"isDone": False, "actions": []}, "ValueError: nope")
    assert d.status == "Failed" and "nope" in json.loads(d.output)


def test_work_items_store_and_old_database_migration(tmp_path):
    from devhost.durable.store import Store, WorkItem

    path = tmp_path / "durable.sqlite"
    store = Store(path)
    assert store.add_work_item(WorkItem("i", "e1", 0, "work", '"x"', scheduled_time="t"))
    assert not store.add_work_item(WorkItem("i", "e1", 0, "work", '"y"', scheduled_time="t"))  # same key: kept
    assert store.mark_work_item_running(("i", "e1", 0), "t2") == 1
    assert store.mark_work_item_running(("i", "e1", 0), "t3") == 2  # delivered again
    [item] = store.work_items("i")
    assert (item.input, item.state, item.dequeue_count, item.started_time) == ('"x"', "Running", 2, "t3")
    store.delete_work_item(item.key)
    assert store.work_items() == []
    # A store written before work items existed: the table is created on open, rows survive.
    store.put(_instance(history=[h.execution_started("orch", None), h.task_scheduled(0, "work", None)]))
    store.db.execute("DROP TABLE activities")
    store.close()
    store = Store(path)
    assert store.get("i").history[1]["Name"] == "work" and store.work_items() == []
    store.close()


async def test_restart_turns_unfinished_history_activities_of_an_old_store_into_work_items(tmp_path):
    import asyncio
    from types import SimpleNamespace

    from devhost.durable.service import DurableService
    from devhost.durable.store import Store

    path = tmp_path / "durable.sqlite"
    store = Store(path)
    history = [h.orchestrator_started(), h.execution_started("orch", None), h.orchestrator_completed(),
               h.task_scheduled(0, "gone", '"a"'), h.task_scheduled(1, "done", None), h.task_completed(1, "1")]
    store.put(_instance(history=history))
    store.db.execute("DROP TABLE activities")  # as written by an older devhost
    store.close()
    service = DurableService(SimpleNamespace(get=lambda name, kind: None), None, path, "hub")
    await service.start()
    for _ in range(50):  # the missing activity fails (no such function): its result reaches the inbox
        if any(ev.get("TaskScheduledId") == 0 for ev in service.store.inbox("i")) or \
                any(ev.get("TaskScheduledId") == 0 and ev["EventType"] == h.TASK_FAILED for ev in service.store.get("i").history):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the unfinished activity never ran")
    assert service.store.work_items() == []
    await service.close()


def test_busy_port_names_the_process():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortBusyError, match=rf"port {port} for the thing .*pid {os.getpid()}"):
            ensure_free(port, what="the thing")


async def test_well_known_account_needs_default_ports():
    from devhost.azurite import WELL_KNOWN, AzuriteError, start_azurite

    with pytest.raises(AzuriteError, match="default ports"):
        await start_azurite(ports=(0, 0, 0), account_key=WELL_KNOWN)


def test_make_run_table_has_endpoints_keys_and_three_curls(tmp_path):
    from types import SimpleNamespace

    from devhost.run import render

    host = {"url": "http://127.0.0.1:7071", "api": "http://127.0.0.1:7071/api",
            "durable": "http://127.0.0.1:7071/runtime/webhooks/durabletask",
            "functions": {"relay_send": {"trigger": "httpTrigger", "route": "/api/relay/{connection}/{*path}",
                                         "methods": ["POST"], "authLevel": "FUNCTION"},
                          "relay_queue_send": {"trigger": "queueTrigger", "queue": "relay-outbound"}}}
    keys = {"masterKey": "MASTER", "functionKeys": {"default": "FKEY"}}
    emulator = {"relay": "wss://127.0.0.1:9443", "http": "https://127.0.0.1:9443", "ca_cert": str(tmp_path / "ca.pem"),
                "identity_endpoint": "http://127.0.0.1:4000/msi/token", "identity_header": "SECRET-HEADER",
                "state_dir": str(tmp_path), "port": 9443}
    azurite = SimpleNamespace(endpoints={"Blob": "b", "Queue": "q", "Table": "t"})
    values = {"RELAY_NAMESPACE": "127.0.0.1:9443", "INBOUND_ROUTES": '[{"pathPrefix": "/orders", "queue": "orders-in"}]'}
    text = render(host, keys, emulator, azurite, values, "orders", "inbound", 4.2, "started")
    assert "MASTER" in text and "FKEY" in text and "SECRET-HEADER" not in text
    assert sum(line.startswith("curl ") for line in text.splitlines()) == 4  # send, enqueue, relay POST, peek
    assert "/api/relay/orders/hello?code=FKEY" in text and "orders-in" in text


def test_make_run_port_and_state_overrides(monkeypatch):
    """`make run` keeps its fixed defaults; CLI flags or DEVHOST_RUN_* env move ports and state (0 = free port)."""
    from devhost.run import RunError, azurite_ports, parse_args

    for name in ("DEVHOST_RUN_LOCAL_DIR", "DEVHOST_RUN_AZURITE_PORTS", "DEVHOST_RUN_RELAY_PORT",
                 "DEVHOST_RUN_HOST_PORT", "DEVHOST_RUN_ECHO_PORT"):
        monkeypatch.delenv(name, raising=False)
    args = parse_args([])
    assert (args.local_dir, args.relay_port, args.host_port, args.echo_port) == (None, None, None, None)
    assert azurite_ports(args.azurite_ports) == (10000, 10001, 10002)
    assert azurite_ports("0") == (0, 0, 0) and azurite_ports("20000,20001,20002") == (20000, 20001, 20002)
    for bad in ("1,1,2", "a,b,c", "1,2", "70000"):
        with pytest.raises(RunError):
            azurite_ports(bad)
    monkeypatch.setenv("DEVHOST_RUN_HOST_PORT", "0")
    monkeypatch.setenv("DEVHOST_RUN_LOCAL_DIR", "/tmp/x")
    args = parse_args(["--echo-port", "18080"])
    assert (args.host_port, args.echo_port, args.local_dir) == (0, 18080, "/tmp/x")


def test_make_run_identity_port_is_fixed_by_default():
    from devhost.run import identity_port_for, parse_args

    assert identity_port_for(9443, None) == 9444 and identity_port_for(0, None) == 0
    assert identity_port_for(9443, 0) == 0 and identity_port_for(9443, 19444) == 19444
    assert parse_args(["--identity-port", "19444"]).identity_port == 19444


async def test_make_run_cli_lines_work_as_pasted(tmp_path):
    """The block after the curl commands, pasted into bash from the repository folder: SAS send, managed-identity token."""
    import subprocess

    from devhost.run import cli_block
    from relay import AzureNamedKeyCredential, HybridConnectionListener, RelayedHttpResponse
    from tests.fixtures.emulator import start_emulator

    async def echo(request):
        return RelayedHttpResponse(200, body=b"echo: " + await request.read())

    async with start_emulator(None, tls=True) as emu:
        lines = cli_block(emu.info, "orders")
        text = "\n".join(lines)
        assert "IDENTITY_ENDPOINT=" + emu.identity_endpoint in text and emu.identity_header not in text
        assert "TrustedCaFile=" + emu.ca_cert in text and "EntityPath=orders" in text
        key = AzureNamedKeyCredential("RootManageSharedAccessKey", emu.sas_key("RootManageSharedAccessKey"))
        async with HybridConnectionListener(emu.address("orders"), key, request_handler=echo, connection_verify=emu.ca_cert):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("IDENTITY_", "MSI_", "RELAY_"))}
            proc = await asyncio.to_thread(subprocess.run, ["bash", "-e", "-c", text], cwd=REPO, env=env,
                                           capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("echo: hello via the CLI") and "200 OK" in proc.stderr
    assert "credential: ManagedIdentityCredential (from connection string)" in proc.stdout
    assert "Entra ID token" in proc.stdout
