"""Tokens, signatures and keys never reach a log record or an exception text, even at DEBUG."""

from __future__ import annotations

import asyncio
import logging
import traceback
from urllib.parse import quote

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.identity.aio import ManagedIdentityCredential

from relay import (
    AuthorizationFailedError,
    EndpointNotFoundError,
    ForbiddenError,
    RejectedError,
    RelayedHttpResponse,
    RelayError,
    get_token_provider,
)
from relay.sas import parse_sas_token
from tests.fixtures.emulator import identity

from .conftest import ROOT_RULE, make_client, make_listener

MB = 1024 * 1024


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        out = []
        for record in self.records:
            out.append(record.getMessage())
            out.append(repr(record.args))
            if record.exc_info:
                out.append("".join(traceback.format_exception(*record.exc_info)))
        return out


def secret_parts(token: str) -> list[str]:
    """The token and the pieces of it that are secret on their own."""
    parts = [token]
    if token.startswith("SharedAccessSignature "):
        signature = parse_sas_token(token).signature
        parts += [signature, quote(signature, safe="")]
    else:
        parts.append(token.split(".")[2])  # a JWT's signature
    return [p for p in parts if len(p) >= 16]


async def test_no_secret_in_logs_or_errors_during_a_full_session(emulator, monkeypatch):
    for name, value in emulator.identity_env().items():
        monkeypatch.setenv(name, value)
    capture = Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    errors: list[BaseException] = []
    secrets: list[str] = []
    try:
        key = emulator.sas_key(ROOT_RULE)
        sas = AzureNamedKeyCredential(ROOT_RULE, key)
        wrong = AzureNamedKeyCredential(ROOT_RULE, "d3Jvbmcta2V5LXRoYXQtaXMtbG9uZy1lbm91Z2g=")
        async with ManagedIdentityCredential(client_id=identity(emulator.config, "listener")["clientId"]) as jwt_cred, \
                ManagedIdentityCredential(client_id=identity(emulator.config, "nobody")["clientId"]) as nobody:

            async def handler(request):
                if request.path == "/boom":
                    raise RuntimeError("handler failure")
                return RelayedHttpResponse(200, body=(await request.read()))

            def on_accept(ctx):
                return ctx.headers.get("X-Ok") == "1"

            async with make_listener(emulator, credential=jwt_cred, request_handler=handler, accept_handler=on_accept) as listener, \
                    make_client(emulator, credential=sas) as client:
                async def echo():
                    async for stream in listener:
                        async with stream:
                            async for message in stream:
                                await stream.send(message)

                task = asyncio.ensure_future(echo())
                assert await (await client.request("POST", "/small", body=b"x")).read() == b"x"
                assert len(await (await client.request("POST", "/big", body=b"y" * MB)).read()) == MB
                assert (await client.request("GET", "/boom")).status == 500
                async with await client.connect(headers={"X-Ok": "1"}) as stream:
                    await stream.send("ping")
                    assert await stream.receive() == "ping"
                with pytest.raises(RejectedError) as info:
                    await client.connect()
                errors.append(info.value)
                task.cancel()
                secrets += secret_parts((await get_token_provider(jwt_cred).get_token(listener.address)).token)
                secrets += secret_parts((await get_token_provider(sas).get_token(client.address)).token)

            # Refused tokens: wrong key (401), identity without a role (403), no such entity (404).
            async with make_client(emulator, credential=wrong) as bad:
                for attempt in (bad.request("GET", "/"), bad.connect()):
                    with pytest.raises(AuthorizationFailedError) as info:
                        await attempt
                    errors.append(info.value)
                secrets += secret_parts((await get_token_provider(wrong).get_token(bad.address)).token)
            with pytest.raises(ForbiddenError) as info:
                async with make_listener(emulator, credential=nobody):
                    pass
            errors.append(info.value)
            secrets += secret_parts((await get_token_provider(nobody).get_token(emulator.address("orders"))).token)
            with pytest.raises(EndpointNotFoundError) as info:
                async with make_listener(emulator, "no-such-hc", credential=sas):
                    pass
            errors.append(info.value)
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)

    secrets += [key]
    assert len(secrets) >= 8 and capture.records  # the session did log (at DEBUG), and we know what to look for
    texts = capture.texts()
    for error in errors:
        assert isinstance(error, RelayError)
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
    leaks = [(secret[:12] + "...", text[:200]) for secret in secrets for text in texts if secret in text]
    assert not leaks
