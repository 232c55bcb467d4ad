"""Issue 11 row 8: no token, signature or key reaches the emulator's log, not even through aiohttp's own loggers.

A real emulator subprocess at DEBUG level receives malformed requests over TLS (a header with a
space before the colon, a request line over 8 KB, a header over 8 KB), each carrying a real SAS
token, a JWT from the emulator's identity endpoint and a function-key-like query value, plus a
normal flow (a token request, a refused send, a listener). Afterwards the log must hold none of them.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import quote

import aiohttp
import pytest

from relay.sas import generate_sas_token, sas_resource_uri
from tests.fixtures.emulator import TEST_CONFIG, start_emulator

pytestmark = pytest.mark.slow

ROOT_RULE = "RootManageSharedAccessKey"


async def raw_exchange(host: str, port: int, context: ssl.SSLContext, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname="localhost")
    try:
        writer.write(payload)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(4096), 10)
        except (asyncio.TimeoutError, ConnectionError):
            return b""
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


async def test_malformed_requests_leave_no_secret_in_the_emulator_log(monkeypatch):
    monkeypatch.setenv("EMULATOR_LOG_LEVEL", "DEBUG")
    async with start_emulator(TEST_CONFIG) as emulator:
        sas = generate_sas_token(sas_resource_uri(emulator.address("inbound")), ROOT_RULE, emulator.sas_key(ROOT_RULE))
        signature = sas.split("sig=", 1)[1].split("&", 1)[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(emulator.identity_endpoint, params={"resource": "https://relay.azure.net", "api-version": "2019-08-01"},
                                   headers={"X-IDENTITY-HEADER": emulator.identity_env()["IDENTITY_HEADER"]}) as response:
                assert response.status == 200, await response.text()
                jwt = (await response.json())["access_token"]
        assert jwt.count(".") == 2
        secrets = {"sas signature": signature, "jwt": jwt, "jwt signature": jwt.rsplit(".", 1)[1],
                   "identity header": emulator.identity_env()["IDENTITY_HEADER"], "function key": "fk-0123456789abcdef"}

        host, port = "127.0.0.1", emulator.port
        context = emulator.ssl_context()
        requests = [
            # a header with a space before the colon (RFC 9112 says reject; aiohttp logs the line)
            f"POST /inbound/x HTTP/1.1\r\nHost: localhost\r\nServiceBusAuthorization : {sas}\r\n"
            f"Authorization : Bearer {jwt}\r\nContent-Length: 0\r\n\r\n".encode(),
            # a request line over 8 KB carrying the token in the query
            (f"GET /$hc/inbound?sb-hc-action=connect&sb-hc-token={quote(sas, safe='')}&code=fk-0123456789abcdef&pad="
             + "a" * 9000 + " HTTP/1.1\r\nHost: localhost\r\n\r\n").encode(),
            # a header over 8 KB
            (f"POST /inbound/x HTTP/1.1\r\nHost: localhost\r\nServiceBusAuthorization: {sas}&pad=" + "b" * 9000
             + "\r\nContent-Length: 0\r\n\r\n").encode(),
            (f"GET /inbound HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {jwt}" + "c" * 9000 + "\r\n\r\n").encode(),
            # a header without a colon, and one with a NUL
            f"GET /inbound HTTP/1.1\r\nHost: localhost\r\nAuthorization Bearer {jwt}\r\n\r\n".encode(),
            f"GET /inbound HTTP/1.1\r\nHost: localhost\r\nX-IDENTITY-HEADER: {secrets['identity header']}\x00\r\n\r\n".encode(),
            # a well-formed send with a token (no listener): logged by the emulator itself
            f"POST /inbound/x?code=fk-0123456789abcdef HTTP/1.1\r\nHost: localhost\r\nServiceBusAuthorization: {sas}\r\n"
            "Content-Length: 0\r\n\r\n".encode(),
        ]
        answers = [await raw_exchange(host, port, context, payload) for payload in requests]
        assert sum(b" 400 " in a.split(b"\r\n", 1)[0] for a in answers) >= 4, [a[:40] for a in answers]  # the malformed ones were refused
        await asyncio.sleep(0.5)  # let the emulator flush its log (PYTHONUNBUFFERED is set)
        log = emulator.log_path.read_text(errors="replace")
    assert "aiohttp" in log or "Bad" in log or "Invalid" in log, log[-2000:]  # aiohttp did log the bad requests
    leaked = {name: value for name, value in secrets.items() if value in log}
    assert not leaked, f"{sorted(leaked)} in the emulator log:\n{log[-3000:]}"
