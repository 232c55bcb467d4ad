"""Connection strings parse like RelayConnectionStringBuilder; the emulator form works for real."""

import pytest
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential

from relay import (
    ConnectionLostError,
    HybridConnectionClient,
    HybridConnectionListener,
    RelayedHttpResponse,
    parse_connection_string,
)
from tests.fixtures.emulator import identity

NS = "Endpoint=sb://contoso.servicebus.windows.net/"


def test_sas_key_form():
    cs = parse_connection_string(f"{NS};EntityPath=orders;SharedAccessKeyName=send;SharedAccessKey=abc=")
    assert cs.address() == "sb://contoso.servicebus.windows.net/orders"
    cred = cs.credential()
    assert isinstance(cred, AzureNamedKeyCredential) and cred.named_key == ("send", "abc=")
    assert "abc=" not in repr(cs)


def test_keys_are_case_insensitive_and_spaces_trimmed():
    cs = parse_connection_string(" endpoint = sb://ns.example/ ; ENTITYPATH=a/b ; operationtimeout=00:01:30 ;")
    assert cs.address() == "sb://ns.example/a/b"
    assert cs.operation_timeout == 90.0


def test_signature_form_and_conflict():
    cs = parse_connection_string(f"{NS};SharedAccessSignature=SharedAccessSignature sr=x&sig=y&se=1&skn=z")
    assert isinstance(cs.credential(), AzureSasCredential)
    assert "sig=y" not in repr(cs)
    with pytest.raises(ValueError, match="cannot be combined"):
        parse_connection_string(f"{NS};SharedAccessSignature=SharedAccessSignature sr=x;SharedAccessKeyName=a;SharedAccessKey=b")


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="'Bogus'"):
        parse_connection_string(f"{NS};Bogus=1")


@pytest.mark.parametrize("text, message", [
    ("EntityPath=x", "Endpoint"),
    ("Endpoint=https://ns/", "sb://"),
    (f"{NS};SharedAccessKeyName=a", "SharedAccessKey"),
    (f"{NS};SharedAccessKey=a", "SharedAccessKeyName"),
    (f"{NS};Authentication=Password", "Managed Identity"),
    (f"{NS};OperationTimeout=soon", "OperationTimeout"),
    (f"{NS};UseDevelopmentEmulator=maybe", "UseDevelopmentEmulator"),
    (f"{NS};EntityPath=a;EntityPath=b", "twice"),
    (f"{NS};TrustedCaFile=/tmp/ca.pem", "UseDevelopmentEmulator=true"),
])
def test_invalid(text, message):
    with pytest.raises(ValueError, match=message):
        parse_connection_string(text)


def test_managed_identity(monkeypatch):
    cs = parse_connection_string(f"{NS};EntityPath=orders;Authentication=Managed Identity;ManagedIdentityClientId=abc")
    assert cs.uses_managed_identity and cs.managed_identity_client_id == "abc"
    from azure.identity.aio import ManagedIdentityCredential

    assert isinstance(cs.credential(), ManagedIdentityCredential)


def test_emulator_form_configures_the_client():
    text = ("Endpoint=sb://127.0.0.1:8443/;EntityPath=orders;SharedAccessKeyName=k;SharedAccessKey=v;"
            "UseDevelopmentEmulator=true;TrustedCaFile=/nonexistent/ca.pem")
    cs = parse_connection_string(text)
    assert cs.use_development_emulator and cs.trusted_ca_file == "/nonexistent/ca.pem"
    with pytest.raises(FileNotFoundError, match="the CA file /nonexistent/ca.pem does not exist"):
        HybridConnectionClient.from_connection_string(text)


def test_plain_endpoint_for_no_tls_emulator():
    text = "Endpoint=ws://127.0.0.1:9000/;SharedAccessKeyName=k;SharedAccessKey=v"
    listener = HybridConnectionListener.from_connection_string(text, entity_path="orders")
    assert listener.address == "sb://127.0.0.1:9000/orders"
    assert listener._address.ws_base == "ws://127.0.0.1:9000"


def test_entity_path_conflict():
    with pytest.raises(ValueError, match="already names EntityPath"):
        parse_connection_string(f"{NS};EntityPath=a").address("b")
    with pytest.raises(ValueError, match="no EntityPath"):
        parse_connection_string(NS).address()


def test_client_addresses():
    client = HybridConnectionClient("sb://ns.example:8443/orders/eu")
    assert client.address == "sb://ns.example:8443/orders/eu"
    assert client._address.entity_http_url("/a?x=1") == "https://ns.example:8443/orders/eu/a?x=1"
    assert client._address.entity_http_url("/") == "https://ns.example:8443/orders/eu"
    with pytest.raises(ValueError, match="sb://"):
        HybridConnectionClient("ftp://ns/orders")
    with pytest.raises(ValueError, match="names no hybrid connection"):
        HybridConnectionClient("sb://ns/")


async def test_development_emulator_form_against_the_emulator(emulator, monkeypatch):
    """One code path, configured for the emulator by the connection string alone (SAS and managed identity)."""
    dev = f";UseDevelopmentEmulator=true;TrustedCaFile={emulator.ca_cert}"

    async def handler(request):
        return RelayedHttpResponse(200, body=b"hello " + (await request.read()))

    async def round_trip(listen_cs: str, send_cs: str) -> bytes:
        async with HybridConnectionListener.from_connection_string(listen_cs, request_handler=handler) as listener, \
                HybridConnectionClient.from_connection_string(send_cs) as client:
            assert listener.address == client.address == emulator.address("orders")
            async with await client.request("POST", "/x", body=b"emulator") as resp:
                return await resp.read()

    sas = round_trip(emulator.connection_string("listen-orders", "orders") + dev,
                     emulator.connection_string("send-orders", "orders") + dev)
    assert await sas == b"hello emulator"

    # Without the CA file the emulator's certificate is not trusted, and the error says what to add.
    no_ca = emulator.connection_string("send-orders", "orders") + ";UseDevelopmentEmulator=true"
    async with HybridConnectionClient.from_connection_string(no_ca) as client:
        with pytest.raises(ConnectionLostError, match="not trusted.*TrustedCaFile"):
            await client.request("GET", "/")

    # Managed identity: the emulator's identity endpoint stands in for Azure's.
    for name, value in emulator.identity_env().items():
        monkeypatch.setenv(name, value)
    endpoint = f"Endpoint=sb://127.0.0.1:{emulator.port}/;EntityPath=orders;Authentication=Managed Identity"

    def mi(name: str) -> str:
        return f"{endpoint};ManagedIdentityClientId={identity(emulator.config, name)['clientId']}{dev}"

    client = HybridConnectionClient.from_connection_string(mi("sender"))
    credential = client.token_provider.credential
    assert type(credential).__name__ == "ManagedIdentityCredential"
    async with HybridConnectionListener.from_connection_string(mi("listener"), request_handler=handler), client:
        assert await (await client.request("POST", "/", body=b"identity")).read() == b"hello identity"
    assert client._owned_credential is None  # the credential the string created was closed with the client


def test_missing_ca_file_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        HybridConnectionClient("sb://127.0.0.1:8443/orders", None, connection_verify=".local/emulator/ca.pem")
    message = str(info.value)
    assert f"connection_verify: the CA file {tmp_path / '.local/emulator/ca.pem'} does not exist" in message
    assert f"relative to the current directory {tmp_path}" in message
