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
            return RelayedHttpResponse(200, body=b"hi " + (await request.read()))

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


async def test_client_secret_credential_confidential_client_flow(emulator, identity_env):
    """ClientSecretCredential against a stand-in Entra token endpoint on 127.0.0.1 (TLS, the emulator's CA).

    The stand-in checks the client id, secret and scope of the confidential-client request and
    answers with a token the emulator's identity endpoint issued to the "sender" identity, so
    the Relay emulator accepts it as that identity's.
    """
    import ssl
    import uuid

    from aiohttp import web
    from azure.identity.aio import ClientSecretCredential

    tenant, client_id, secret = str(uuid.uuid4()), identity(emulator.config, "sender")["clientId"], "s3cret-value"
    requests = []

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        requests.append((request.match_info["tenant"], dict(form)))
        if (form.get("client_id"), form.get("client_secret"), form.get("grant_type")) != (client_id, secret, "client_credentials"):
            return web.json_response({"error": "invalid_client", "error_description": "AADSTS7000215"}, status=401)
        async with mi(emulator, "sender") as upstream:
            issued = await upstream.get_token(form["scope"])
        return web.json_response({"token_type": "Bearer", "access_token": issued.token, "expires_in": 3599})

    app = web.Application()
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(emulator.state_dir / "server.pem", emulator.state_dir / "server-key.pem")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    authority = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        async with ClientSecretCredential(tenant, client_id, secret, authority=authority, connection_verify=emulator.ca_cert,
                                          disable_instance_discovery=True) as cred:
            async with make_listener(emulator, request_handler=lambda r: RelayedHttpResponse(200, body=b"secret ok")), \
                    make_client(emulator, credential=cred) as client:
                responses = await asyncio.gather(*(client.request("GET", "/") for _ in range(5)))
                assert {await r.read() for r in responses} == {b"secret ok"}
            assert get_token_provider(cred).fetch_count == 1
    finally:
        await runner.cleanup()
    assert len(requests) == 1 and requests[0][0] == tenant
    assert requests[0][1]["scope"] == "https://relay.azure.net/.default"


async def test_fixed_sas_and_callback_provider_against_the_emulator(emulator, identity_env):
    """A fixed SharedAccessSignature (via the connection string) sends; a .NET-style callback provider listens."""
    from relay import AadCallbackTokenProvider, HybridConnectionClient
    from relay.sas import generate_sas_token, sas_resource_uri

    seen = []
    async with mi(emulator, "listener") as upstream:
        async def callback(audience, authority, state):
            seen.append((audience, authority, state))
            return (await upstream.get_token("https://relay.azure.net/.default")).token

        provider = AadCallbackTokenProvider(callback, "https://login.example/tenant", state="s1")
        signature = generate_sas_token(sas_resource_uri(emulator.address("orders")), "send-orders", emulator.sas_key("send-orders"))
        conn = (f"Endpoint=sb://127.0.0.1:{emulator.port}/;EntityPath=orders;SharedAccessSignature={signature};"
                f"UseDevelopmentEmulator=true;TrustedCaFile={emulator.ca_cert}")
        async with make_listener(emulator, credential=provider, request_handler=lambda r: RelayedHttpResponse(200, body=b"both")), \
                HybridConnectionClient.from_connection_string(conn) as client:
            assert await (await client.request("GET", "/")).read() == b"both"
            assert client.token_provider.describe() == "fixed SharedAccessSignature"
    assert seen == [("https://relay.azure.net/", "https://login.example/tenant", "s1")]
