"""The token cache: one per credential, one fetch in flight, refresh ahead, secrets never shown."""

import asyncio
import base64
import json
import threading
import time

import pytest
from azure.core.credentials import AccessToken, AzureNamedKeyCredential, AzureSasCredential

from relay import AadCallbackTokenProvider, get_token_provider, token_fetch_count
from relay.credentials import RELAY_AUDIENCE_URI, refresh_margin
from relay.sas import RELAY_SCOPE, generate_sas_token, parse_sas_token

ADDRESS = "sb://contoso.servicebus.windows.net/orders"


def jwt(exp: float) -> str:
    def seg(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{seg({'alg': 'none'})}.{seg({'exp': int(exp), 'aud': 'https://relay.azure.net'})}.sig"


class FakeAsyncCredential:
    def __init__(self, lifetime=3600.0, delay=0.05):
        self.calls, self.scopes, self.lifetime, self.delay = 0, [], lifetime, delay

    async def get_token(self, *scopes, **kwargs):
        self.calls += 1
        self.scopes.append(scopes)
        await asyncio.sleep(self.delay)
        exp = time.time() + self.lifetime
        return AccessToken(jwt(exp) + str(self.calls), exp)  # type: ignore[arg-type]  (float keeps sub-second lifetimes)


class FakeSyncCredential:
    def __init__(self):
        self.calls, self.threads = 0, set()

    def get_token(self, *scopes, **kwargs):
        self.calls += 1
        self.threads.add(threading.get_ident())
        time.sleep(0.02)
        return AccessToken("sync-token", int(time.time() + 3600))


async def test_one_fetch_for_many_concurrent_callers():
    cred = FakeAsyncCredential()
    provider = get_token_provider(cred)
    assert get_token_provider(cred) is provider  # one cache per credential object
    before = token_fetch_count()
    tokens = await asyncio.gather(*(provider.get_token(ADDRESS) for _ in range(200)))
    assert cred.calls == 1 and len({t.token for t in tokens}) == 1
    assert cred.scopes == [(RELAY_SCOPE,)]
    assert provider.fetch_count == 1 and token_fetch_count() == before + 1
    await provider.get_token(ADDRESS)
    assert cred.calls == 1  # cached


async def test_refresh_ahead_of_expiry():
    cred = FakeAsyncCredential(lifetime=1.0, delay=0)
    provider = get_token_provider(cred)
    first = await provider.get_token(ADDRESS)
    assert 0.09 <= first.expires_on - first.refresh_at <= 0.1001  # 10 % of the lifetime
    await asyncio.sleep(0.95)
    second = await provider.get_token(ADDRESS)
    assert second.token != first.token and cred.calls == 2
    assert refresh_margin(86400) == 240 and refresh_margin(100) == 10


async def test_failed_refresh_keeps_the_valid_token():
    cred = FakeAsyncCredential(lifetime=2.0, delay=0)
    provider = get_token_provider(cred)
    first = await provider.get_token(ADDRESS)

    async def broken(*scopes, **kw):
        raise RuntimeError("identity endpoint down")
    cred.get_token = broken
    await asyncio.sleep(max(0.0, first.refresh_at - time.time()) + 0.05)
    assert (await provider.get_token(ADDRESS)).token == first.token


async def test_cancelled_caller_does_not_fail_the_others():
    cred = FakeAsyncCredential(delay=0.2)
    provider = get_token_provider(cred)
    a = asyncio.ensure_future(provider.get_token(ADDRESS))
    b = asyncio.ensure_future(provider.get_token(ADDRESS))
    await asyncio.sleep(0.05)
    a.cancel()
    assert (await b).token and cred.calls == 1


async def test_sync_credential_runs_in_a_thread():
    cred = FakeSyncCredential()
    provider = get_token_provider(cred)
    tokens = await asyncio.gather(*(provider.get_token(ADDRESS) for _ in range(20)))
    assert cred.calls == 1 and tokens[0].token == "sync-token"
    assert threading.get_ident() not in cred.threads


async def test_sas_key_tokens_are_per_entity():
    cred = AzureNamedKeyCredential("send-orders", "secret-key")
    provider = get_token_provider(cred)
    token = await provider.get_token("sb://ns.example:8443/orders")
    parsed = parse_sas_token(token.token)
    assert parsed.resource == "http://ns.example/orders/" and parsed.key_name == "send-orders"
    assert token.expires_on - time.time() == pytest.approx(3600, abs=5)
    other = await provider.get_token("sb://ns.example:8443/inbound")
    assert parse_sas_token(other.token).resource == "http://ns.example/inbound/"
    assert provider.fetch_count == 2
    assert "secret-key" not in repr(provider) and token.token not in repr(token)
    assert provider.describe() == "SAS key 'send-orders'"


async def test_fixed_sas_string():
    text = generate_sas_token("http://ns/orders/", "rule", "key", ttl=600)
    provider = get_token_provider(AzureSasCredential(text))
    token = await provider.get_token(ADDRESS)
    assert token.token == text and token.expires_on == parse_sas_token(text).expiry
    with pytest.raises(ValueError, match="SharedAccessSignature"):
        await get_token_provider(AzureSasCredential("not-a-sas")).get_token(ADDRESS)


async def test_callback_provider_sync_and_async():
    seen = []

    def sync_cb(audience, authority, state):
        seen.append((audience, authority, state))
        return jwt(time.time() + 600)

    async def async_cb(audience, authority, state):
        return "Bearer " + jwt(time.time() + 600)

    t1 = await get_token_provider(AadCallbackTokenProvider(sync_cb, "https://login/tenant", {"s": 1})).get_token(ADDRESS)
    assert seen == [(RELAY_AUDIENCE_URI, "https://login/tenant", {"s": 1})]
    assert t1.expires_on == pytest.approx(time.time() + 600, abs=5)
    t2 = await get_token_provider(AadCallbackTokenProvider(async_cb)).get_token(ADDRESS)
    assert not t2.token.startswith("Bearer ")  # the service expects the bare JWT


async def test_anonymous_and_unsupported():
    assert await get_token_provider(None).get_token(ADDRESS) is None
    with pytest.raises(TypeError, match="unsupported credential"):
        get_token_provider(object())
