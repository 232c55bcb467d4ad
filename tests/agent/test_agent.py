"""``python -m relay agent``: two connections through the real emulator, health and metrics, drain, reload.

The agent runs as a subprocess (``python -m relay agent --config FILE``), the local services are
real aiohttp servers on 127.0.0.1, senders use the library's client against the emulator.
"""

from __future__ import annotations

import asyncio
import signal

from relay import HybridConnectionClient
from relay.errors import RelayError
from tests.fixtures.emulator import TEST_CONFIG, identity, start_emulator

from .agent_helpers import run_agent, toml_str
from .conftest import ROOT_RULE, dev_connection_string, local_service, raw_http


def two_connections(emu, orders_url: str, echo_url: str, *, health: bool = True, orders_extra: str = "",
                    echo_extra: str = "", agent_extra: str = "", log_level: str = "info") -> str:
    listener_identity = identity(emu.config, "listener")["clientId"]
    return f"""
[agent]
log_level = "{log_level}"
drain_timeout = 20
{agent_extra}

[health]
enabled = {str(health).lower()}
port = 0

[[connections]]
name = "orders"
target = {toml_str(orders_url)}
{orders_extra}
[connections.credential]
type = "connection_string"
connection_string_env = "TEST_ORDERS_CS"

[[connections]]
name = "echo"
address = {toml_str(emu.address("echo"))}
target = {toml_str(echo_url)}
ca_file = {toml_str(emu.ca_cert)}
{echo_extra}
[connections.credential]
type = "managed_identity"
client_id = {toml_str(listener_identity)}
"""


def agent_env(emu) -> dict[str, str]:
    return {"TEST_ORDERS_CS": dev_connection_string(emu, "orders"), **emu.identity_env()}


def client(emu, entity: str) -> HybridConnectionClient:
    from azure.core.credentials import AzureNamedKeyCredential

    return HybridConnectionClient(emu.address(entity), AzureNamedKeyCredential(ROOT_RULE, emu.sas_key(ROOT_RULE)),
                                  connection_verify=emu.ca_cert)


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return values.get(f"{name}{{{want}}}", 0.0)


async def test_two_connections_http_websocket_health_and_metrics(emulator, tmp_path):
    async with local_service("orders-svc") as orders, local_service("echo-svc") as echo:
        # DEBUG: even then no token, key or body may reach the log.
        config = two_connections(emulator, orders.url + "/base/", echo.url, echo_extra="websockets = true", log_level="debug")
        async with run_agent(config, tmp_path, env=agent_env(emulator)) as agent:
            assert (await agent.get("/healthz")) == (200, {"status": "ok"})
            ready = await agent.wait_ready()
            assert set(ready["connections"]) == {"orders", "echo"}
            before = await agent.metrics()
            assert metric(before, "relay_agent_listener_online", connection="orders") == 1
            assert metric(before, "relay_agent_token_refreshes_total", connection="echo") >= 1
            assert metric(before, "relay_agent_token_expiry_timestamp_seconds", connection="echo") > 0

            async with client(emulator, "orders") as c:
                for i in range(3):
                    resp = await c.request("POST", f"/items/{i}?x=1", body=b"qzw")
                    assert (resp.status, await resp.text()) == (200, f"orders-svc POST /base/items/{i}?x=1 qzw")
            assert (await raw_http(emulator, "orders", "/%2e%2e/admin/secret"))[0] == 400
            async with client(emulator, "echo") as c:
                resp = await c.request("GET", "/hello")
                assert resp.headers["X-Local"] == "echo-svc"
                assert resp.headers["X-Seen-Authorization"] == ""  # the relay token never reaches the local service
                async with await c.connect(path="/ws?room=7") as stream:
                    await stream.send("ping")
                    assert await stream.receive() == "echo-svc:/ws?room=7:ping"
                    await stream.send(b"\x00\x01")
                    assert await stream.receive() == b"\x00\x01"

            # The agent finishes its side of the stream after ours is closed: wait for its log line, then scrape.
            await agent.wait_log(lambda r: r.get("event") == "websocket" and "bytes_in" in r)
            after = await agent.metrics()
            assert metric(after, "relay_agent_requests_total", connection="orders", status_class="2xx") \
                - metric(before, "relay_agent_requests_total", connection="orders", status_class="2xx") == 3
            assert metric(after, "relay_agent_requests_total", connection="orders", status_class="4xx") == 1
            assert metric(after, "relay_agent_requests_total", connection="echo", status_class="2xx") == 1
            assert metric(after, "relay_agent_bytes_received_total", connection="orders") == 9
            assert metric(after, "relay_agent_local_request_seconds_count", connection="orders") == 3
            assert metric(after, "relay_agent_websockets_total", connection="echo", status_class="1xx") == 1
            assert metric(after, "relay_agent_bytes_received_total", connection="echo") == 6  # "ping" + 2 bytes
            assert metric(after, "relay_agent_websockets_open", connection="echo") == 0
        # Structured logs: one JSON object per line with request id, connection and status; no secrets.
        requests = agent.events("request", "orders")
        assert len(requests) == 4 and all(r["request_id"] and r["status"] in (200, 400) and r["ts"].endswith("Z") for r in requests)
        text = agent.raw.decode()
        assert emulator.sas_key(ROOT_RULE) not in text and "SharedAccessSignature" not in text and "eyJ" not in text
        assert emulator.identity_header not in text and "access_token" not in text
        assert "qzw" not in text  # bodies are never logged (not hex, so no id can contain it)
        assert agent.proc.returncode == 0


async def test_websocket_forwarding_off_and_allow_paths(emulator, tmp_path):
    async with local_service("svc") as svc:
        config = two_connections(emulator, svc.url, svc.url, orders_extra='allow_paths = ["/api"]',
                                 echo_extra="websockets = false")
        async with run_agent(config, tmp_path, env=agent_env(emulator)) as agent:
            await agent.wait_ready()
            async with client(emulator, "echo") as c:
                try:
                    await c.connect(path="/ws")
                    raise AssertionError("a WebSocket was forwarded with websockets = false")
                except RelayError as exc:
                    assert getattr(exc, "status", None) == 403
            async with client(emulator, "orders") as c:
                assert (await c.request("GET", "/api/x")).status == 200
                assert (await c.request("GET", "/other")).status == 403
        assert svc.seen == ["/api/x"]


async def test_hanging_local_service_gets_504_from_the_agent(emulator, tmp_path):
    async with local_service("svc") as svc:
        config = two_connections(emulator, svc.url, svc.url, orders_extra="timeout = 1")
        async with run_agent(config, tmp_path, env=agent_env(emulator)) as agent:
            await agent.wait_ready()
            async with client(emulator, "orders") as c:
                resp = await c.request("GET", "/slow")
                assert resp.status == 504
                assert "did not answer within 1 s" in await resp.text()
            values = await agent.metrics()
            assert metric(values, "relay_agent_requests_total", connection="orders", status_class="5xx") == 1


async def test_sigterm_drains_in_flight_requests_and_exits_0(emulator, tmp_path):
    async with local_service("svc") as svc:
        config = two_connections(emulator, svc.url, svc.url)
        async with run_agent(config, tmp_path, env=agent_env(emulator)) as agent:
            await agent.wait_ready()
            async with client(emulator, "orders") as c:
                in_flight = asyncio.ensure_future(c.request("GET", "/slow"))
                while "/slow" not in svc.seen:  # the local service has the request
                    await asyncio.sleep(0.05)
                agent.signal(signal.SIGTERM)
                await agent.wait_log(lambda r: r.get("event") == "draining")
                assert (await agent.get("/readyz"))[0] == 503  # not ready while draining
                svc.hold.set()  # the local service answers now, during the drain
                resp = await in_flight
                assert (resp.status, await resp.text()) == (200, "finally")
            assert await agent.wait_exit() == 0
        assert agent.events("exit")


async def test_start_with_relay_down_stays_up_and_readyz_follows_an_emulator_restart(tmp_path):
    async with start_emulator(TEST_CONFIG) as emu, local_service("svc") as svc:
        config = two_connections(emu, svc.url, svc.url)
        env = agent_env(emu)
        await emu.stop()  # Relay unreachable at start
        async with run_agent(config, tmp_path, env=env) as agent:
            failed = await agent.wait_log(lambda r: r.get("event") == "connect_failed")
            assert failed["connection"] in ("orders", "echo") and "reason" in failed
            status, body = await agent.get("/readyz")
            assert status == 503 and set(body["not_ready"]) == {"orders", "echo"}
            assert "error" in body["not_ready"]["orders"]
            assert agent.proc.returncode is None  # still running, retrying

            await emu.restart()
            await agent.wait_ready()
            await emu.stop()
            body = await agent.wait_ready(False)
            assert set(body["not_ready"]) == {"orders", "echo"}
            await emu.restart()
            await agent.wait_ready()
            async with client(emu, "orders") as c:
                assert (await c.request("GET", "/x")).status == 200
            values = await agent.metrics()
            assert metric(values, "relay_agent_reconnects_total", connection="orders") >= 1
            assert metric(values, "relay_agent_connect_failures_total", connection="orders") >= 1


async def test_unknown_entity_and_missing_role_do_not_stop_the_agent_and_sighup_fixes_them(emulator, tmp_path):
    async with local_service("svc") as svc:
        nobody = identity(emulator.config, "nobody")["clientId"]
        good = two_connections(emulator, svc.url, svc.url)
        broken = good.replace(f'address = {toml_str(emulator.address("echo"))}', f'address = {toml_str(emulator.address("nope"))}')
        broken += f"""
[[connections]]
name = "no-role"
address = {toml_str(emulator.address("inbound"))}
target = {toml_str(svc.url)}
ca_file = {toml_str(emulator.ca_cert)}
[connections.credential]
type = "managed_identity"
client_id = {toml_str(nobody)}
"""
        async with run_agent(broken, tmp_path, env=agent_env(emulator)) as agent:
            await agent.wait_log(lambda r: r.get("event") == "connect_failed" and r["connection"] == "echo")
            await agent.wait_log(lambda r: r.get("event") == "connect_failed" and r["connection"] == "no-role")
            await agent.wait_log(lambda r: r.get("event") == "online" and r["connection"] == "orders")
            status, body = await agent.get("/readyz")
            assert status == 503 and set(body["not_ready"]) == {"echo", "no-role"}
            assert "Endpoint" in body["not_ready"]["echo"]["error"] or "not" in body["not_ready"]["echo"]["error"]
            assert "Listener" in body["not_ready"]["no-role"]["error"]  # the hint names the missing role
            onlines = len(agent.events("online", "orders"))

            agent.config_path.write_text(good)
            agent.signal(signal.SIGHUP)
            reloaded = await agent.wait_log(lambda r: r.get("event") == "reloaded")
            assert reloaded["kept"] == "orders" and reloaded["changed"] == "echo" and reloaded["removed"] == "no-role"
            await agent.wait_ready()
            assert len(agent.events("online", "orders")) == onlines  # the unchanged connection was not dropped

            agent.config_path.write_text(good + "\n[agent2]\n")
            agent.signal(signal.SIGHUP)
            failed = await agent.wait_log(lambda r: r.get("event") == "reload_failed")
            assert "agent2" in failed["message"]
            assert (await agent.get("/readyz"))[0] == 200


async def test_text_log_format_is_readable_and_timestamped(emulator, tmp_path):
    async with local_service("svc") as svc:
        config = two_connections(emulator, svc.url, svc.url, health=False)
        async with run_agent(config, tmp_path, env=agent_env(emulator), args=()) as agent:
            while agent.raw.count(b" online ") < 2:
                await asyncio.sleep(0.1)
            async with client(emulator, "orders") as c:
                await c.request("GET", "/x?code=secret-function-key")
            while b" request " not in agent.raw:
                await asyncio.sleep(0.1)
        line = next(x for x in agent.raw.decode().splitlines() if " request " in x)
        assert line[:4].isdigit() and "Z INFO" in line and "connection=orders" in line and "status=200" in line
        assert "request_id=" in line and "secret-function-key" not in agent.raw.decode()
