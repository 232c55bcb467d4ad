"""The app's managed identity: one credential object per identity per worker process.

Every invocation shares the same ``azure.identity.aio.ManagedIdentityCredential`` (and the
relay library keys its token cache on the credential object), so a warm instance fetches a
Relay token once per token lifetime, not once per message. Created lazily on first use, so
importing the app never touches the identity endpoint. ``RELAY_CLIENT_ID`` selects a
user-assigned identity for Relay; storage uses ``BridgeStorage__clientId`` (the same object
when the ids match). Tests call :func:`bridge.reset_caches` between cases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.identity.aio import ManagedIdentityCredential

_credentials: dict[str | None, ManagedIdentityCredential] = {}


def get_credential(client_id: str | None = None) -> ManagedIdentityCredential:
    """The process-wide credential for ``client_id`` (None: the system-assigned identity)."""
    credential = _credentials.get(client_id)
    if credential is None:
        # azure-identity is imported here, not with the app: with msal and requests it is about a
        # third of the app's import time, and indexing the functions does not need it.
        from azure.identity.aio import ManagedIdentityCredential

        credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
        _credentials[client_id] = credential
    return credential


async def close_credentials() -> None:
    """Close and forget every credential (the next call creates fresh ones)."""
    credentials = list(_credentials.values())
    _credentials.clear()
    for credential in credentials:
        await credential.close()
