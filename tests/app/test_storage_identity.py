"""Identity-based BridgeStorage end to end: the app's managed identity (emulator tokens, user-assigned via
BridgeStorage__clientId) against Azurite over HTTPS with ``--oauth basic``, as in Azure with
``BridgeStorage__queueServiceUri`` / ``__blobServiceUri`` / ``__credential`` / ``__clientId``."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
from pathlib import Path

import pytest
import pytest_asyncio
from azure.storage.queue import TextBase64DecodePolicy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge import fanin, storage
from bridge.credentials import get_credential
from devhost.azurite import _LISTENING, ACCOUNT, AZURITE_BIN
from tests.fixtures.emulator import identity


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def azurite_oauth(tmp_path_factory):
    """Azurite over HTTPS that only accepts bearer tokens it can validate (``--oauth basic``)."""
    directory = tmp_path_factory.mktemp("azurite-oauth")
    cert, key = _self_signed(directory)
    process = await asyncio.create_subprocess_exec(
        str(AZURITE_BIN), "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--inMemoryPersistence",
        "--oauth", "basic", "--cert", str(cert), "--key", str(key),
        "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
        "--blobPort", "0", "--queuePort", "0", "--tablePort", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    endpoints: dict[str, str] = {}
    try:
        async def ready():
            while len(endpoints) < 3:
                line = await process.stdout.readline()
                if not line:
                    raise RuntimeError("Azurite (oauth) exited during start-up")
                match = _LISTENING.search(line.decode(errors="replace"))
                if match:
                    endpoints[match.group(1)] = match.group(2).rstrip("/")

        await asyncio.wait_for(ready(), 30)
        drain = asyncio.get_running_loop().create_task(process.stdout.read())
        yield {"queue": f"{endpoints['Queue']}/{ACCOUNT}", "blob": f"{endpoints['Blob']}/{ACCOUNT}", "cert": str(cert)}
        drain.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def test_identity_based_storage_stores_messages_and_claim_checks(emulator, bridge_env, azurite_oauth, monkeypatch):
    assert azurite_oauth["queue"].startswith("https://")
    client_id = identity(emulator.config, "listener")["clientId"]  # a user-assigned identity for storage
    monkeypatch.delenv("BridgeStorage")
    options = storage.client_options  # trust Azurite's self-signed certificate (Azure's storage certificates are public)
    monkeypatch.setattr(storage, "client_options", lambda: {**options(), "connection_verify": azurite_oauth["cert"]})
    bridge_env(BridgeStorage="", BridgeStorage__queueServiceUri=azurite_oauth["queue"],
               BridgeStorage__blobServiceUri=azurite_oauth["blob"], BridgeStorage__credential="managedidentity",
               BridgeStorage__clientId=client_id)
    message = fanin.inbound_message(id="mi-1", kind="http", connection="inbound", method="POST", path="/", query="",
                                    headers={}, received_at=fanin.utc_now_text())
    small = await fanin.store(message, b"hello", queue="mi-in", container="mi-claims")
    big_body = os.urandom(60 * 1024)
    big = await fanin.store({**message, "id": "mi-2"}, big_body, queue="mi-in", container="mi-claims")
    assert not small.claim_checked and big.claim_checked

    queue = (await storage.queue("mi-in"))
    got = [json.loads(m.content) async for m in queue.receive_messages(messages_per_page=10)]
    assert [m["id"] for m in got] == ["mi-1", "mi-2"] and got[0]["body"] == "hello"
    blob = (await storage.container("mi-claims")).get_blob_client(got[1]["claimCheck"]["blob"])
    assert await (await blob.download_blob()).readall() == big_body
    assert storage.queue_service().credential is get_credential(client_id)


async def test_azurite_refuses_requests_without_a_valid_token(azurite_oauth):
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
    from azure.storage.queue.aio import QueueClient

    class Forged:
        async def get_token(self, *scopes, **kwargs):
            from azure.core.credentials import AccessToken

            return AccessToken("not-a-jwt", 2_000_000_000)

        async def close(self):
            pass

    client = QueueClient(azurite_oauth["queue"], "mi-in", credential=Forged(), connection_verify=azurite_oauth["cert"],
                         retry_total=0, message_decode_policy=TextBase64DecodePolicy())
    async with client:
        with pytest.raises((ClientAuthenticationError, HttpResponseError)):
            await client.create_queue()
