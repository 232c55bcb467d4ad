"""Interop: Microsoft's Node clients (hyco-ws 1.0.5, hyco-https 1.4.5) against the emulator, unchanged.

The peers live in tests/peers/*.js and resolve ``hyco-ws``/``hyco-https`` from the repo's
node_modules. They trust the emulator CA through ``NODE_EXTRA_CA_CERTS``. Tokens come
either from ``createRelayToken`` (Node sr form, port kept) or from the identity endpoint
(a JWT handed over in ``RELAY_TOKEN`` and used as a token function).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil

import aiohttp
import pytest

from relay import protocol as p
from tests.emulator.drivers import ROOT, LogWatch, hc, sas_token, ws_connect
from emulator.launcher import REPO_ROOT

PEERS = REPO_ROOT / "tests" / "peers"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (REPO_ROOT / "node_modules" / "hyco-ws").is_dir(),
    reason="node or the hyco-* packages are not installed (make setup)",
)


async def _jwt(emu) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(emu.identity_endpoint, params={"api-version": "2019-08-01", "resource": "https://relay.azure.net"},
                               headers={"X-IDENTITY-HEADER": emu.identity_header}) as r:
            return (await r.json())["access_token"]


async def _env(emu, entity: str, auth: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RELAY_TOKEN", "NODE_OPTIONS")}
    env.update(RELAY_BASE=emu.relay, ENTITY=entity, NODE_EXTRA_CA_CERTS=emu.ca_cert or "", NODE_NO_WARNINGS="1")
    if auth == "sas":
        env.update(SAS_KEY_NAME=ROOT, SAS_KEY=emu.sas_key(ROOT))
    else:
        env["RELAY_TOKEN"] = await _jwt(emu)
    return env


@contextlib.asynccontextmanager
async def node_listener(script: str, env: dict[str, str]):
    proc = await asyncio.create_subprocess_exec(
        "node", str(PEERS / script), cwd=str(PEERS), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        if json.loads(line or b"{}").get("event") != "listening":
            err = await proc.stderr.read() if proc.returncode is not None else b""
            raise AssertionError(f"{script} did not come up: {line!r} {err[-2000:]!r}")
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def run_node(script: str, env: dict[str, str], **extra: str) -> dict:
    proc = await asyncio.create_subprocess_exec(
        "node", str(PEERS / script), cwd=str(PEERS), env={**env, **extra},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    lines = [json.loads(x) for x in out.decode().splitlines() if x.strip().startswith("{")]
    assert lines, f"{script} printed nothing (rc={proc.returncode}): {err.decode()[-2000:]}"
    return lines[-1]


@pytest.mark.parametrize("auth", ["sas", "jwt"])
async def test_hyco_ws_listener_and_sender(emulator, auth):
    env = await _env(emulator, "echo", auth)
    async with node_listener("ws_listener.js", env):
        plain, negotiated = await asyncio.gather(
            run_node("ws_sender.js", env),
            # Subprotocols: hyco-ws's listener picks the first offered; the emulator must hand the
            # offer to the listener (connectHeaders) and echo its choice to the sender.
            run_node("ws_sender.js", env, SUBPROTOCOLS="chat.v2,chat.v1"),
        )
        assert plain == {"event": "done", "ok": True, "protocol": None}
        assert negotiated == {"event": "done", "ok": True, "protocol": "chat.v2"}
        # A Python sender against the Node listener too.
        async with ws_connect(emulator, hc(emulator, "echo", "connect"), sas_token(emulator, "echo"),
                              subprotocols=["py.v1", "py.v0"]) as ws:
            assert ws.subprotocol == "py.v1"
            await ws.send("py text")
            assert await ws.recv() == "py text"
            await ws.send(b"\x01" * 70000)
            assert await ws.recv() == b"\x01" * 70000


@pytest.mark.parametrize("auth", ["sas", "jwt"])
async def test_hyco_https_listener(emulator, auth):
    env = await _env(emulator, "orders", auth)
    async with node_listener("https_listener.js", env):
        small = await run_node("https_sender.js", env, HTTP_PATH="/orders/sub?x=1&sb-hc-id=abc", BODY_SIZE="5")
        assert small["status"] == 200 and small["via"] == f"1.1 {emulator.host}"
        summary = json.loads(small["body"])
        assert summary["method"] == "POST" and summary["url"] == "/orders/sub?x=1"
        assert summary["length"] == 5 and summary["custom"] == "Hello" and summary["sha256"] == small["sent_sha256"]

        large = await run_node("https_sender.js", env, HTTP_PATH="/orders/upload", BODY_SIZE=str(100 * 1024))
        summary = json.loads(large["body"])
        assert large["status"] == 200 and summary["length"] == 100 * 1024 and summary["sha256"] == large["sent_sha256"]

        big = await run_node("https_sender.js", env, HTTP_PATH="/orders/big", BODY_SIZE="0")
        assert big["status"] == 200 and big["length"] == 200 * 1024

        # Python aiohttp as the sender: 100 KB request (rendezvous) and 200 KB response.
        token = sas_token(emulator, "orders")
        payload = os.urandom(100 * 1024)
        async with aiohttp.ClientSession(headers={p.HEADER_TOKEN: token}) as session:
            ssl = emulator.ssl_context()
            async with session.post(f"{emulator.http}/orders/py", data=payload, ssl=ssl) as r:
                summary = await r.json()
                assert r.status == 200 and r.headers["X-Listener"] == "hyco-https" and r.reason == "OK"
                assert summary["sha256"] == hashlib.sha256(payload).hexdigest()
            async with session.get(f"{emulator.http}/orders/big", ssl=ssl) as r:
                assert r.status == 200 and await r.read() == b"b" * (200 * 1024)
            async with session.get(f"{emulator.http}/orders/small", ssl=ssl) as r:
                assert r.status == 200 and (await r.json())["method"] == "GET"


async def test_hyco_https_listener_with_node_senders(emulator):
    """Plain Node ``https.request`` senders: GET, HEAD, 204, chunked upload, and 400 at once."""
    env = await _env(emulator, "orders", "sas")
    watch = LogWatch(emulator)
    async with node_listener("https_listener.js", env):
        get, head, empty, chunked = await asyncio.gather(
            run_node("https_sender.js", env, METHOD="GET", HTTP_PATH="/orders/items?id=7", BODY_SIZE="0"),
            run_node("https_sender.js", env, METHOD="HEAD", HTTP_PATH="/orders/items", BODY_SIZE="0"),
            run_node("https_sender.js", env, METHOD="DELETE", HTTP_PATH="/orders/nocontent", BODY_SIZE="0"),
            run_node("https_sender.js", env, HTTP_PATH="/orders/chunked", BODY_SIZE=str(150 * 1024), CHUNKED="1"),
        )
        assert get["status"] == 200 and get["listener"] == "hyco-https" and get["via"] == f"1.1 {emulator.host}"
        assert json.loads(get["body"]) | {"sha256": None} == {
            "method": "GET", "url": "/orders/items?id=7", "length": 0, "sha256": None, "custom": "Hello"}
        assert head["status"] == 200 and head["listener"] == "hyco-https" and head["length"] == 0
        assert empty["status"] == 204 and empty["length"] == 0 and empty["listener"] == "hyco-https"
        assert chunked["status"] == 200 and chunked["match"] is True
        assert json.loads(chunked["body"])["length"] == 150 * 1024

        many = await run_node("https_sender.js", env, HTTP_PATH="/orders/many", BODY_SIZE="512", COUNT="400")
        assert many == {"count": 400, "ok": 400, "statuses": {"200": 400}, "errors": []}
        # hyco-https's quirks (an empty body message after body:false, HEAD, 204) are not protocol
        # errors: its control channel stayed up throughout.
        log = watch.text()
        assert "alformed" not in log and "offline" not in log, log[-3000:]


_KEEPALIVE_LISTENER = r"""
const https = require('hyco-https');
const moment = require('moment');
const uri = process.env.LISTEN_URI;
const token = () => https.createRelayToken(uri, process.env.SAS_KEY_NAME, process.env.SAS_KEY);
const options = { server: uri, token };
if (process.env.KEEPALIVE_MS) options.keepAliveTimeout = moment.duration(parseInt(process.env.KEEPALIVE_MS, 10));
const server = https.createRelayedServer(options, (req, res) => { res.end('alive'); });
server.listen();
let announced = false;
server.on('listening', () => { if (!announced) { announced = true; console.log(JSON.stringify({ event: 'listening' })); } });
server.on('error', () => {});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
"""


@pytest.mark.parametrize("keepalive_ms", ["250", ""])
async def test_hyco_https_keepalive_pongs_satisfy_the_idle_timeout(keepalive_ms):
    """hyco-https's own keep-alive (unsolicited pongs, keepAliveTimeout) keeps its control channel
    open under the strict idle timeout; without it the channel is dropped and hyco-https
    reconnects, as Node users see in Azure after about 4 minutes."""
    from tests.fixtures.emulator import TEST_CONFIG, start_emulator

    async with start_emulator({**TEST_CONFIG, "idleTimeoutSeconds": 0.8}, tls=False) as emu:
        env = {k: v for k, v in os.environ.items() if k != "NODE_OPTIONS"}
        env.update(LISTEN_URI=f"{emu.relay}/$hc/orders?sb-hc-action=listen", SAS_KEY_NAME=ROOT, SAS_KEY=emu.sas_key(ROOT),
                   KEEPALIVE_MS=keepalive_ms, NODE_NO_WARNINGS="1")
        proc = await asyncio.create_subprocess_exec(
            "node", "-e", _KEEPALIVE_LISTENER, cwd=str(REPO_ROOT), env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert json.loads(line or b"{}").get("event") == "listening", line
            await asyncio.sleep(3.0)  # several idle timeouts
            log = emu.log_path.read_text()
            idle_closes = log.count("offline on orders")
            if keepalive_ms:
                assert idle_closes == 0, log[-2000:]
                token = sas_token(emu, "orders")
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"{emu.http}/orders/x", headers={p.HEADER_TOKEN: token}) as r:
                        assert r.status == 200 and await r.text() == "alive"
            else:
                assert idle_closes >= 1
        finally:
            with contextlib.suppress(Exception):
                proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await proc.wait()
