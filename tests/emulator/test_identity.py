"""The managed-identity endpoint: App Service 2019-08-01 shape, errors, azure-identity (sync and aio), stats."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt

from relay import sas
from tests.fixtures.emulator import identity

RELAY = "https://relay.azure.net"


async def _get(emu, params: dict, header: str | None = "ok"):
    headers = {} if header is None else {"X-IDENTITY-HEADER": emu.identity_header if header == "ok" else header}
    async with aiohttp.ClientSession() as session:
        async with session.get(emu.identity_endpoint, params=params, headers=headers) as r:
            return r.status, await r.json()


async def test_token_shape(emulator):
    user = identity(emulator.config, "sender")
    status, body = await _get(emulator, {"api-version": "2019-08-01", "resource": RELAY, "client_id": user["clientId"]})
    assert status == 200
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert isinstance(body["expires_on"], str) and int(body["expires_on"]) > time.time() + 3000
    assert body["resource"] == RELAY and body["token_type"] == "Bearer" and body["client_id"] == user["clientId"]
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "RS256"
    claims = sas.jwt_claims(body["access_token"])
    tenant = emulator.config["tenantId"]
    assert claims["aud"] == RELAY and claims["iss"] == f"https://sts.windows.net/{tenant}/" and claims["tid"] == tenant
    assert claims["oid"] == user["principalId"] and claims["appid"] == claims["azp"] == user["clientId"]
    assert claims["nbf"] <= claims["iat"] < claims["exp"]
    # principal_id / object_id select the same identity; no id -> the system-assigned one.
    for key in ("principal_id", "object_id"):
        _, body = await _get(emulator, {"api-version": "2019-08-01", "resource": RELAY, key: user["principalId"]})
        assert body["client_id"] == user["clientId"]
    _, body = await _get(emulator, {"api-version": "2019-08-01", "resource": RELAY})
    assert body["client_id"] == identity(emulator.config, "bridge")["clientId"]


async def test_errors(emulator):
    ok = {"api-version": "2019-08-01", "resource": RELAY}
    status, body = await _get(emulator, ok, header=None)
    assert status == 400 and "X-IDENTITY-HEADER" in body["message"]
    status, body = await _get(emulator, ok, header="wrong")
    assert status == 401
    status, body = await _get(emulator, {**ok, "client_id": "00000000-0000-0000-0000-00000000dead"})
    assert status == 400 and "client_id" in body["message"]
    status, body = await _get(emulator, {"api-version": "2017-09-01", "resource": RELAY})
    assert status == 400 and "api-version" in body["message"]
    status, body = await _get(emulator, {"api-version": "2019-08-01"})
    assert status == 400 and "resource" in body["message"]


async def test_azure_identity_sync_and_stats(emulator, monkeypatch):
    from azure.identity import ManagedIdentityCredential

    for key, value in emulator.identity_env().items():
        monkeypatch.setenv(key, value)

    before = await emulator.tokens_issued()
    user = identity(emulator.config, "listener")

    def fetch():
        credential = ManagedIdentityCredential(client_id=user["clientId"])
        first = credential.get_token(sas.RELAY_SCOPE)
        second = credential.get_token(sas.RELAY_SCOPE)  # cached by MSAL
        return first, second

    first, second = await asyncio.to_thread(fetch)
    assert first.token == second.token and first.expires_on > time.time() + 3000
    assert sas.jwt_claims(first.token)["oid"] == user["principalId"]
    assert await emulator.tokens_issued() == before + 1
