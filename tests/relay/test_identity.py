"""Entra ID through azure-identity's real ManagedIdentityCredential and the emulator's identity endpoint."""

import asyncio

import pytest
from azure.identity.aio import ManagedIdentityCredential

from relay import ForbiddenError, RelayedHttpResponse, get_token_provider
from tests.fixtures.emulator import identity

from .conftest import make_client, make_listener


@pytest.fixture
def identity_env(emulator, monkeypatch):
    for name, value in emulator.identity_env().items():
        monkeypatch.setenv(name, value)
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def mi(emulator, name: str | None) -> ManagedIdentityCredential:
    if name is None:
        return ManagedIdentityCredential()  # system-assigned ("bridge", Owner on the namespace)
    return ManagedIdentityCredential(client_id=identity(emulator.config, name)["clientId"])


async def test_listener_and_sender_with_managed_identities(emulator, identity_env):
    async with mi(emulator, "listener") as listen_cred, mi(emulator, "sender") as send_cred:
        async def handler(request):
            return RelayedHttpResponse(200, body=b"hi " + request.body)

        async with make_listener(emulator, credential=listen_cred, request_handler=handler), \
                make_client(emulator, credential=send_cred) as client:
            results = await asyncio.gather(*(client.request("POST", "/", body=b"%d" % i) for i in range(50)))
            assert [await r.read() for r in results] == [b"hi %d" % i for i in range(50)]
        # One token for 50 concurrent requests: one cache per credential, one fetch in flight.
        assert get_token_provider(send_cred).fetch_count == 1
        assert get_token_provider(listen_cred).fetch_count == 1


async def test_system_assigned_identity_owner(emulator, identity_env):
    async with mi(emulator, None) as cred:
        async with make_listener(emulator, "inbound", credential=cred, request_handler=lambda r: RelayedHttpResponse(200, body="ok")), \
                make_client(emulator, "inbound", credential=cred) as client:
            assert await (await client.request("GET", "/")).text() == "ok"


async def test_missing_role_names_the_cause(emulator, identity_env):
    async with mi(emulator, "nobody") as nobody, mi(emulator, "sender") as sender:
        async with make_client(emulator, credential=nobody) as client:
            with pytest.raises(ForbiddenError) as info:
                await client.request("GET", "/")
        message = str(info.value)
        assert "lacks the Azure Relay Sender role on sb://" in message and "/orders" in message
        assert "five minutes" in message
        token = (await get_token_provider(nobody).get_token(emulator.address("orders"))).token
        assert token not in message and token not in repr(info.value)
        # The sender role is scoped to "orders": it cannot listen there, nor send to "inbound".
        with pytest.raises(ForbiddenError, match="lacks the Azure Relay Listener role"):
            async with make_listener(emulator, credential=sender):
                pass
        async with make_client(emulator, "inbound", credential=sender) as client:
            with pytest.raises(ForbiddenError):
                await client.connect()


async def test_sync_credential_runs_off_the_event_loop(emulator, identity_env):
    from azure.identity import ManagedIdentityCredential as SyncManagedIdentityCredential

    cred = SyncManagedIdentityCredential(client_id=identity(emulator.config, "sender")["clientId"])
    try:
        async with make_listener(emulator, request_handler=lambda r: RelayedHttpResponse(200, body="sync ok")), \
                make_client(emulator, credential=cred) as client:
            responses = await asyncio.gather(*(client.request("GET", "/") for _ in range(10)))
            assert {await r.text() for r in responses} == {"sync ok"}
        assert get_token_provider(cred).fetch_count == 1
    finally:
        cred.close()
