"""Fixtures for the Functions app tests: the real emulator (Relay + managed identity) and Azurite.

``bridge_env`` points the app at them through its real settings (monkeypatched environment,
including IDENTITY_ENDPOINT/IDENTITY_HEADER so ``ManagedIdentityCredential`` talks to the
emulator's identity endpoint) and calls :func:`bridge.reset_caches` before and after each test,
so no credential, Relay client or storage client leaks from one test into the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator

import pytest
import pytest_asyncio
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.queue import TextBase64DecodePolicy
from azure.storage.queue.aio import QueueClient

import bridge
from relay.listener import HybridConnectionListener, RelayedHttpRequest, RelayedHttpResponse

ROOT_RULE = "RootManageSharedAccessKey"
OUTBOUND = "orders,echo,orders/eu,ghost"  # "ghost" is allowed by the app but does not exist in the namespace
ROUTES = [
    {"pathPrefix": "/orders", "queue": "app-orders-in"},
    {"header": "X-Route", "value": "eu", "queue": "app-eu-in"},
]


@pytest.fixture(scope="session")
def app_functions():
    """``app.get_functions()`` called ONCE per process (a second call on the same app raises)."""
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}


def app_env(emulator, azurite, **overrides: str) -> dict[str, str]:
    env = {
        "RELAY_NAMESPACE": emulator.host,
        "RELAY_CA_FILE": emulator.ca_cert or "",
        "RELAY_CLIENT_ID": "",
        "RELAY_OUTBOUND_CONNECTIONS": OUTBOUND,
        "RELAY_DEFAULT_CONNECTION": "orders",
        "RELAY_INBOUND_CONNECTIONS": "inbound",
        "INBOUND_ROUTES": json.dumps(ROUTES),
        "INBOUND_DEFAULT_QUEUE": "app-inbound",
        "CLAIM_CHECK_CONTAINER": "app-claimcheck",
        "LISTENER_WINDOW_SECONDS": "300",
        "BridgeStorage": azurite.connection_string,
        **emulator.identity_env(),
    }
    env.update(overrides)
    return env


@pytest_asyncio.fixture
async def bridge_env(emulator, azurite, monkeypatch):
    """Apply the app settings for the emulator and Azurite; returns a setter for overrides."""
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    await bridge.reset_caches()

    def apply(**overrides: str) -> dict[str, str]:
        env = app_env(emulator, azurite, **overrides)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    apply()
    yield apply
    await bridge.reset_caches()


def root_credential(emulator) -> AzureNamedKeyCredential:
    return AzureNamedKeyCredential(ROOT_RULE, emulator.sas_key(ROOT_RULE))


@contextlib.asynccontextmanager
async def onprem_listener(emulator, entity: str, handler=None, **kw) -> AsyncIterator[HybridConnectionListener]:
    """An on-premises HTTP listener (the relay library's, with the namespace SAS key)."""
    listener = HybridConnectionListener(
        emulator.address(entity), root_credential(emulator), connection_verify=emulator.ca_cert, request_handler=handler, **kw
    )
    async with listener:
        yield listener


def echo_handler(seen: list | None = None):
    """Echo the body back with a few headers describing the request."""

    async def handle(request: RelayedHttpRequest) -> RelayedHttpResponse:
        body = await request.read()
        if seen is not None:
            seen.append(request)
        return RelayedHttpResponse(
            201,
            headers={
                "Content-Type": request.headers.get("Content-Type", "application/octet-stream"),
                "X-Echo-Path": request.target,
                "X-Echo-Method": request.method,
                "Set-Cookie": "session=secret",
                "X-Ms-Internal": "no",
            },
            body=body,
        )

    return handle


async def drain_queue(connection_string: str, name: str, *, expect: int = 1, timeout: float = 10.0) -> list[str]:
    """Receive (and delete) ``expect`` messages from queue ``name``, base64-decoded."""
    client = QueueClient.from_connection_string(connection_string, name, message_decode_policy=TextBase64DecodePolicy())
    out: list[str] = []
    async with client:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < expect and asyncio.get_running_loop().time() < deadline:
            try:
                async for message in client.receive_messages(messages_per_page=32, visibility_timeout=30):
                    out.append(message.content)
                    await client.delete_message(message)
            except Exception as exc:  # queue not created yet
                if "QueueNotFound" not in str(exc):
                    raise
            if len(out) < expect:
                await asyncio.sleep(0.1)
    return out


async def clear_queue(connection_string: str, name: str) -> None:
    client = QueueClient.from_connection_string(connection_string, name)
    async with client:
        try:
            await client.clear_messages()
        except Exception as exc:
            if "QueueNotFound" not in str(exc):
                raise
