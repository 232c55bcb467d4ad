"""``python -m relay``: token, send and listen --forward as real subprocesses."""

import asyncio
import os
import sys

import pytest
from aiohttp import web

from relay import RelayedHttpResponse

from .conftest import REPO_ROOT, ROOT_RULE, make_client, make_listener


async def cli(*args: str, env: dict | None = None, timeout: float = 30, cwd=REPO_ROOT) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}, cwd=str(cwd),
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


# -- messages that name the cause and the fix (issue 12) ----------------------------------------


def _run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    from relay.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_ca_file_prints_the_absolute_path(tmp_path, monkeypatch, capsys):
    """The docs' relative TrustedCaFile used from another folder: the message says where it looked."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELAY_CONNECTION_STRING", "Endpoint=sb://127.0.0.1:9/;EntityPath=orders;SharedAccessKeyName=r;"
                       "SharedAccessKey=k;UseDevelopmentEmulator=true;TrustedCaFile=.local/emulator/ca.pem")
    code, _, err = _run_main(["send", "--data", "x"], capsys)
    expected = tmp_path / ".local" / "emulator" / "ca.pem"
    assert code == 2 and "No such file or directory" not in err
    assert f"TrustedCaFile: the CA file {expected} does not exist" in err
    assert f"relative to the current directory {tmp_path}" in err and "give the absolute path" in err

    monkeypatch.delenv("RELAY_CONNECTION_STRING")
    monkeypatch.setenv("RELAY_SAS_KEY", "k")
    code, _, err = _run_main(["send", "sb://127.0.0.1:9/orders", "--sas-key-name", "r", "--ca-file", "ca.pem"], capsys)
    assert code == 2 and f"--ca-file: the CA file {tmp_path / 'ca.pem'} does not exist" in err


@pytest.mark.parametrize("value, suggestion", [
    ("127.0.0.1:8080", "--forward http://127.0.0.1:8080"),
    ("localhost", "--forward http://localhost"),
    ("ftp://127.0.0.1:21", "--forward http://127.0.0.1:21"),
])
def test_forward_without_http_scheme_is_refused_at_start(value, suggestion, capsys):
    code, _, err = _run_main(["listen", "sb://127.0.0.1:9/orders", "--anonymous", "--forward", value], capsys)
    assert code == 2 and "argument --forward" in err and "needs a scheme" in err and suggestion in err


def test_without_azure_identity_the_message_names_the_extra(monkeypatch, capsys):
    """azure-identity absent (simulated: the import fails as it would in a venv without the extra)."""
    for name in ("azure.identity", "azure.identity.aio"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delenv("RELAY_CONNECTION_STRING", raising=False)
    code, _, err = _run_main(["token", "sb://127.0.0.1:9/orders"], capsys)
    assert code == 2 and "ModuleNotFoundError" not in err
    assert "needs the azure-identity package, which is not installed: pip install 'hybridconnections[identity]'" in err
    assert "--sas-key-name" in err  # the alternative that needs no extra

    monkeypatch.setenv("RELAY_CONNECTION_STRING", "Endpoint=sb://127.0.0.1:9/;EntityPath=orders;Authentication=Managed Identity")
    code, _, err = _run_main(["token"], capsys)
    assert code == 2 and "Authentication=Managed Identity needs the azure-identity package" in err
    assert "pip install 'hybridconnections[identity]'" in err


_CHAIN = (
    "DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
    "Attempted credentials:\n"
    "\tEnvironmentCredential: EnvironmentCredential authentication unavailable. Environment variables are not fully configured.\n"
    "Visit https://aka.ms/azsdk/python/identity/environmentcredential/troubleshoot to troubleshoot this issue.\n"
    "\tManagedIdentityCredential: ManagedIdentityCredential authentication unavailable, no response from the IMDS endpoint.\n"
    "\tAzureCliCredential: Azure CLI not found on path\n"
    "To mitigate this issue, please refer to the troubleshooting guidelines here at https://aka.ms/azsdk/python/identity/defaultazurecredential/troubleshoot."
)


def test_credential_chain_summary_names_every_credential_and_the_identity_variables(monkeypatch):
    from azure.core.exceptions import ClientAuthenticationError

    from relay._hints import summarize_credential_failure

    monkeypatch.delenv("IDENTITY_ENDPOINT", raising=False)
    monkeypatch.delenv("MSI_ENDPOINT", raising=False)
    short = summarize_credential_failure(ClientAuthenticationError(_CHAIN), verbose=False)
    assert short[0] == "ClientAuthenticationError: DefaultAzureCredential failed to retrieve a token from the included credentials."
    assert "    EnvironmentCredential: not available here" in short
    assert "    AzureCliCredential: not available here" in short
    assert any("-v" in line for line in short) and not any("aka.ms" in line for line in short)
    assert any("IDENTITY_ENDPOINT and IDENTITY_HEADER" in line and "169.254.169.254" in line for line in short)
    full = summarize_credential_failure(ClientAuthenticationError(_CHAIN), verbose=True)
    assert "  \tEnvironmentCredential: EnvironmentCredential authentication unavailable. Environment variables are not fully configured." in full
    assert any("environmentcredential/troubleshoot" in line for line in full)


async def test_credential_chain_from_the_cli_short_and_with_v(emulator):
    """A real DefaultAzureCredential chain (managed identity refused by the emulator's identity endpoint)."""
    env = {"IDENTITY_ENDPOINT": emulator.identity_endpoint, "IDENTITY_HEADER": "wrong-header",
           "AZURE_CLIENT_ID": "", "AZURE_TENANT_ID": "", "RELAY_CONNECTION_STRING": ""}
    code, _, err = await cli("token", emulator.address("orders"), env=env, timeout=60)
    assert code == 1 and "DefaultAzureCredential failed" in err
    assert "tried, in order:" in err and "    EnvironmentCredential: not available here" in err
    assert "    ManagedIdentityCredential:" in err and "run with -v" in err
    assert "hint: no credential worked" in err
    code, _, verbose = await cli("-v", "token", emulator.address("orders"), env=env, timeout=60)
    assert code == 1 and "Attempted credentials:" in verbose
    assert "Environment variables are not fully configured" in verbose and "tried, in order:" not in verbose


async def test_sas_rule_without_listen_gets_a_sas_rights_hint_not_rbac(emulator):
    code, _, err = await cli("listen", emulator.address("orders"), "--sas-key-name", "send-orders", "--ca-file",
                             emulator.ca_cert, env={"RELAY_SAS_KEY": emulator.sas_key("send-orders")})
    assert code == 1 and "403" in err
    assert "hint: the SAS rule has no 'Listen' right on orders: use a rule with Listen (or Manage)" in err
    assert "role" not in err.split("hint:", 1)[1].split("RBAC")[0]  # no "grant the ... role" advice for SAS


async def test_identity_without_the_role_gets_the_rbac_hint(emulator):
    from tests.fixtures.emulator import identity

    sender = identity(emulator.config, "sender")["clientId"]  # Azure Relay Sender on orders, no Listener
    conn = (f"Endpoint=sb://127.0.0.1:{emulator.port}/;EntityPath=orders;Authentication=Managed Identity;"
            f"ManagedIdentityClientId={sender};UseDevelopmentEmulator=true;TrustedCaFile={emulator.ca_cert}")
    code, _, err = await cli("listen", env={**emulator.identity_env(), "RELAY_CONNECTION_STRING": conn})
    assert code == 1 and "403" in err
    assert "hint: grant the identity the Azure Relay Listener role" in err and "SAS rule" not in err


async def test_websocket_to_a_listener_whose_local_service_is_down_blames_the_local_service(emulator):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    conn = emulator.connection_string(ROOT_RULE, "echo") + f";UseDevelopmentEmulator=true;TrustedCaFile={emulator.ca_cert}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "listen", "--forward", f"http://127.0.0.1:{dead}",
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "RELAY_CONNECTION_STRING": conn}, cwd=str(REPO_ROOT),
    )
    try:
        line = b""
        while b"online" not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), 15)
            assert line, "listen exited early"
        code, _, err = await cli("send", "--ws", "--text", "--data", "hi", env={"RELAY_CONNECTION_STRING": conn})
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    # The forwarder opens the local WebSocket before it accepts, so the sender is refused (502) rather
    # than accepted and then closed.
    assert code == 1 and "502" in err and "local service" in err
    hint = err.split("hint:", 1)[1]
    assert "local service is not" in hint and "start the local service" in hint
    assert "network path to the namespace" not in err


async def test_sb_address_against_a_no_tls_emulator_names_the_tls_mismatch():
    from tests.fixtures.emulator import TEST_CONFIG, start_emulator

    async with start_emulator(TEST_CONFIG, tls=False) as plain:
        env = {"RELAY_SAS_KEY": plain.sas_key(ROOT_RULE)}
        for extra in ([], ["--ws"]):
            code, _, err = await cli("send", f"sb://127.0.0.1:{plain.port}/orders", "--sas-key-name", ROOT_RULE,
                                     "--data", "x", *extra, env=env)
            assert code == 1 and "hint: TLS mismatch" in err, err
            assert f"ws://127.0.0.1:{plain.port}/orders" in err and "--no-tls" in err


async def test_ws_address_against_a_tls_emulator_names_the_tls_mismatch(emulator):
    for extra in ([], ["--ws"]):
        code, _, err = await cli("send", f"ws://127.0.0.1:{emulator.port}/orders", "--sas-key-name", ROOT_RULE,
                                 "--data", "x", *extra, env=sas_env(emulator))
        assert code == 1 and "hint: TLS mismatch" in err, err
        assert f"use sb://127.0.0.1:{emulator.port}/orders" in err


async def test_http_send_ends_with_a_newline_on_a_terminal_and_json_output(emulator, tmp_path):
    import json
    import pty

    async def handler(request):
        return RelayedHttpResponse(200, {"Content-Type": "text/plain"}, b"hello")

    common = [emulator.address("orders"), "--sas-key-name", ROOT_RULE, "--ca-file", emulator.ca_cert]
    async with make_listener(emulator, request_handler=handler) as listener:
        async def echo():
            async for stream in listener:
                async with stream:
                    async for message in stream:
                        await stream.send(message)
        task = asyncio.ensure_future(echo())
        master, slave = pty.openpty()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "relay", "send", *common, stdout=slave, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **sas_env(emulator)}, cwd=str(REPO_ROOT))
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            os.close(slave)
            chunks = []
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the terminal's other end is closed and drained
                    break
                if not data:
                    break
                chunks.append(data)
        finally:
            os.close(master)
        assert proc.returncode == 0 and b"".join(chunks) == b"hello\r\n" and err.decode().strip() == "200 OK"

        code, out, err = await cli("send", *common, "--json", env=sas_env(emulator))
        answer = json.loads(out)
        assert code == 0 and answer["status"] == 200 and answer["reason"] == "OK" and answer["body"] == "hello"
        assert answer["headers"]["Content-Type"] == "text/plain" and answer["mode"] == "http"
        (tmp_path / "binary").write_bytes(b"\x00\x01")
        code, out, err = await cli("send", *common, "--ws", "--data", f"@{tmp_path / 'binary'}", "--json", env=sas_env(emulator))
        answer = json.loads(out)
        assert code == 0 and answer["mode"] == "ws" and answer["messages"] == [{"bodyBase64": "AAE="}], err
        task.cancel()

    code, out, err = await cli("send", *common, "--json", env=sas_env(emulator, "wrong"))
    failure = json.loads(out)["error"]
    assert code == 1 and failure["type"] == "AuthorizationFailedError" and failure["status"] == 401
    assert failure["is_transient"] is False and "SAS key name and key" in failure["hint"]


async def test_token_json_never_contains_the_token(emulator):
    import json

    key = emulator.sas_key(ROOT_RULE)
    code, out, err = await cli("token", emulator.address("orders"), "--sas-key-name", ROOT_RULE, "--json", env=sas_env(emulator))
    info = json.loads(out)
    assert code == 0, err
    assert info["credential"] == "SAS key 'RootManageSharedAccessKey'" and info["token_type"] == "sas"
    assert 3500 < info["expires_in_seconds"] <= 3600 and info["expires_on"].endswith("Z")
    assert "sig=" not in out and key not in out


def test_managed_identity_alone_outside_azure_names_the_two_variables(monkeypatch):
    """Authentication=Managed Identity without IDENTITY_ENDPOINT: azure-identity went to IMDS; say what to set."""
    from azure.identity import CredentialUnavailableError

    from relay._hints import summarize_credential_failure

    monkeypatch.delenv("IDENTITY_ENDPOINT", raising=False)
    monkeypatch.delenv("MSI_ENDPOINT", raising=False)
    lines = summarize_credential_failure(
        CredentialUnavailableError("ManagedIdentityCredential authentication unavailable, no response from the IMDS endpoint."),
        verbose=False)
    assert lines[0].startswith("CredentialUnavailableError: ManagedIdentityCredential authentication unavailable")
    assert any("needs IDENTITY_ENDPOINT and IDENTITY_HEADER" in line for line in lines)
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://127.0.0.1:9444/msi/token")
    lines = summarize_credential_failure(CredentialUnavailableError("ManagedIdentityCredential: refused"), verbose=False)
    assert not any("IDENTITY_ENDPOINT" in line for line in lines)  # already set: the hint would mislead
