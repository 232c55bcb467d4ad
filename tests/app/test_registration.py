"""Every function is registered with the right triggers and bindings, and would load in the worker."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import azure.functions as func
import pytest

from bridge import generation, outbound, settings, supervisor

from .worker_checks import load_problems

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "relay_send", "relay_queue_send", "listener_orchestrator", "listener_window", "collect_listener_reports",
    "listener_starter", "listeners_status", "listener_start", "listener_stop",
}


def bindings(fn) -> dict[str, dict]:
    return {b["name"]: b for b in json.loads(fn.get_function_json())["bindings"]}


def test_exactly_the_expected_functions(app_functions):
    assert set(app_functions) == EXPECTED


def test_function_app_has_exactly_one_function_register():
    import function_app

    registers = [v for v in vars(function_app).values() if isinstance(v, func.FunctionRegister)]
    assert len(registers) == 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_function_passes_the_workers_load_checks(app_functions, name):
    assert load_problems(app_functions[name]) == []


def test_the_load_checks_catch_mistakes():
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="message", queue_name="q", connection="BridgeStorage")
    def wrong_name(msg: func.QueueMessage) -> None: ...

    @app.queue_trigger(arg_name="msg", queue_name="q", connection="BridgeStorage")
    def wrong_type(msg: dict) -> None: ...

    @app.queue_trigger(arg_name="msg", queue_name="q", connection="BridgeStorage")
    @app.queue_output(arg_name="out", queue_name="o", connection="BridgeStorage")
    def missing_out(msg: func.QueueMessage, out: str) -> None: ...

    found = {f.get_function_name(): load_problems(f) for f in app.get_functions()}
    assert all(found[n] for n in ("wrong_name", "wrong_type", "missing_out")), found


def test_http_send(app_functions):
    b = bindings(app_functions["relay_send"])
    assert b["req"]["type"] == "httpTrigger" and b["req"]["route"] == "relay/{connection}/{*path}"
    assert b["req"]["authLevel"] == "FUNCTION" and "POST" in b["req"]["methods"]
    assert b["$return"]["type"] == "http"
    assert inspect.iscoroutinefunction(app_functions["relay_send"].get_user_function())


def test_queue_send(app_functions):
    b = bindings(app_functions["relay_queue_send"])
    assert b["msg"] == {"direction": "IN", "type": "queueTrigger", "name": "msg", "queueName": "relay-outbound",
                        "connection": "BridgeStorage"}


def test_durable_functions_and_the_names_the_orchestrator_calls(app_functions):
    assert bindings(app_functions["listener_orchestrator"])["context"]["type"] == "orchestrationTrigger"
    assert bindings(app_functions["listener_window"])["window"]["type"] == "activityTrigger"
    assert bindings(app_functions["collect_listener_reports"])["request"]["type"] == "activityTrigger"
    # the orchestrator calls activities by registered name: they must exist
    assert {generation.ACTIVITY, generation.COLLECT, supervisor.ORCHESTRATOR} <= set(app_functions)


def test_starter_and_admin_routes(app_functions):
    starter = bindings(app_functions["listener_starter"])
    assert starter["timer"]["type"] == "timerTrigger" and starter["client"]["type"] == "durableClient"
    assert starter["timer"]["schedule"] == "0 */2 * * * *" and starter["timer"]["runOnStartup"] is False
    routes = {n: bindings(app_functions[n])["req"] for n in ("listeners_status", "listener_start", "listener_stop")}
    assert {n: (r["route"], r["methods"], r["authLevel"]) for n, r in routes.items()} == {
        "listeners_status": ("listeners", ["GET"], "ADMIN"),
        "listener_start": ("listeners/start/{*connection}", ["POST"], "ADMIN"),
        "listener_stop": ("listeners/stop/{*connection}", ["POST"], "ADMIN"),
    }
    for name in routes:
        assert bindings(app_functions[name])["client"]["type"] == "durableClient"
        assert not routes[name]["route"].startswith("admin")  # reserved by the host


def test_host_json():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    queues = host["extensions"]["queues"]
    assert queues["maxDequeueCount"] == outbound.MAX_DEQUEUE_COUNT
    assert queues["messageEncoding"] == "base64"  # what bridge.storage's TextBase64EncodePolicy produces
    assert {"batchSize", "newBatchThreshold", "visibilityTimeout", "maxPollingInterval"} <= set(queues)
    assert host["extensions"]["durableTask"]["hubName"]
    h, m, s = map(int, host["functionTimeout"].split(":"))
    timeout = h * 3600 + m * 60 + s
    assert timeout == 30 * 60  # Flex Consumption / Elastic Premium; NOT valid on Consumption (max 10 min)
    # a window plus its close/drain/report must end inside the function timeout
    assert settings.MAX_LISTENER_WINDOW + 60 < timeout


def test_local_settings_sample_loads_and_holds_no_secrets(tmp_path, monkeypatch):
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    assert sample["BridgeStorage"] == sample["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert not any(re.search(r"AccountKey=|SharedAccessKey=|sig=", v) for v in sample.values())
    ca = tmp_path / ".local" / "emulator" / "ca.pem"
    ca.parent.mkdir(parents=True)
    ca.write_text("test")
    monkeypatch.chdir(tmp_path)
    loaded = settings.load_settings(sample)
    assert loaded.relay_namespace == "127.0.0.1:9443" and loaded.relay_address("orders") == "sb://127.0.0.1:9443/orders"
    assert set(sample) - {"FUNCTIONS_WORKER_RUNTIME"} <= set(settings.SETTING_NAMES) | set(settings.HOST_SETTING_NAMES)
