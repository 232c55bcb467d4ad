"""``python -m relay``: token, send and listen --forward as real subprocesses."""

import asyncio
import os
import sys

from aiohttp import web

from relay import RelayedHttpResponse

from .conftest import REPO_ROOT, ROOT_RULE, make_client, make_listener


async def cli(*args: str, env: dict | None = None, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})}, cwd=str(REPO_ROOT),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def sas_env(emulator, key: str | None = None) -> dict:
    return {"RELAY_SAS_KEY": key or emulator.sas_key(ROOT_RULE)}


async def test_token_never_prints_the_token(emulator):
    key = emulator.sas_key(ROOT_RULE)
    code, out, err = await cli("token", emulator.address("orders"), "--sas-key-name", ROOT_RULE, env=sas_env(emulator))
    assert code == 0, err
    assert "SAS key 'RootManageSharedAccessKey'" in out and "expires:" in out and "in 60.0 min" in out
    assert "sig=" not in out and key not in out


async def test_token_with_managed_identity_via_default_credential(emulator):
    env = {**emulator.identity_env(), "AZURE_CLIENT_ID": "", "AZURE_TENANT_ID": ""}
    code, out, err = await cli("token", emulator.address("orders"), env=env)
    assert code == 0, err
    assert "DefaultAzureCredential" in out and "Entra ID token" in out
    assert "eyJ" not in out


async def test_send_http_and_ws_and_errors(emulator, tmp_path):
    async def handler(request):
        return RelayedHttpResponse(201, body=b"got " + (await request.read()) + b" at " + request.path.encode())

    async with make_listener(emulator, request_handler=handler) as listener:
        async def echo():
            async for stream in listener:
                async with stream:
                    async for message in stream:
                        await stream.send(message)
        task = asyncio.ensure_future(echo())
        common = [emulator.address("orders"), "--sas-key-name", ROOT_RULE, "--ca-file", emulator.ca_cert]
        (tmp_path / "body.txt").write_bytes(b"hello")
        code, out, err = await cli("send", *common, "--data", f"@{tmp_path / 'body.txt'}", "--path", "/x", env=sas_env(emulator))
        assert (code, out) == (0, "got hello at /x") and "201" in err
        code, out, err = await cli("send", *common, "--ws", "--text", "--data", "over ws", env=sas_env(emulator))
        assert (code, out) == (0, "over ws\n"), err
        task.cancel()
    code, out, err = await cli("send", *common, "--data", "x", env=sas_env(emulator, "wrong"))
    assert code == 1 and "AuthorizationFailed" not in out
    assert "SAS key name or key is wrong" in err and "hint:" in err
    code, out, err = await cli("send", emulator.address("inbound"), "--sas-key-name", ROOT_RULE, "--ca-file", emulator.ca_cert,
                               env=sas_env(emulator))
    assert code == 1 and "no listeners" in err and "hint: start a listener" in err


async def test_listen_forwards_to_a_local_service(emulator):
    async def local(request: web.Request):
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str("local:" + msg.data)
            return ws
        body = await request.read()
        return web.Response(status=202, text=f"{request.method} {request.path_qs} {body.decode()}", headers={"X-Local": "1"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", local)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    conn = emulator.connection_string(ROOT_RULE, "echo") + f";UseDevelopmentEmulator=true;TrustedCaFile={emulator.ca_cert}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "listen", "--forward", f"http://127.0.0.1:{port}",
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "RELAY_CONNECTION_STRING": conn}, cwd=str(REPO_ROOT),
    )
    try:
        line = b""
        while b"online" not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), 15)
            assert line, "listen exited early"
        async with make_client(emulator, "echo") as client:
            resp = await client.request("PUT", "/api/items?id=3", body=b"payload")
            assert resp.status == 202 and resp.headers["X-Local"] == "1"
            assert await resp.text() == "PUT /api/items?id=3 payload"
            async with await client.connect(path="/chat") as stream:
                await stream.send("hi")
                assert await stream.receive() == "local:hi"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await runner.cleanup()
    assert proc.returncode == 0


def test_unreadable_data_file_is_a_plain_usage_error(monkeypatch, capsys):
    from relay.cli import main

    monkeypatch.setenv("RELAY_SAS_KEY", "k")
    code = main(["send", "sb://127.0.0.1:9/orders", "--sas-key-name", "r", "--data", "@/nonexistent/body.json"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "error: cannot read the --data file '/nonexistent/body.json': No such file or directory"
