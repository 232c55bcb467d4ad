"""Credentials for the agent's connections, built from a :class:`~relay.agent.config.CredentialConfig`.

Connections with the same credential settings share one credential object, so they share one
token cache (:func:`relay.credentials.get_token_provider`) and fetch one Entra token, not one each.
"""

from __future__ import annotations

import os
from typing import Any

from ..connection_string import parse_connection_string
from ..credentials import close_credential
from .config import ConnectionConfig

__all__ = ["CredentialPool"]


class CredentialPool:
    """Creates credentials on demand, shares equal ones, and closes them when no connection uses them."""

    def __init__(self) -> None:
        self._shared: dict[tuple, tuple[Any, int]] = {}

    def acquire(self, conn: ConnectionConfig) -> tuple[Any, dict[str, Any], tuple | None]:
        """``(credential, listener kwargs, sharing key)`` for ``conn``; give the key back to :meth:`release`."""
        kwargs: dict[str, Any] = {}
        if conn.ca_file:
            kwargs["connection_verify"] = conn.ca_file
        cred = conn.credential
        if cred.type == "connection_string":
            assert conn.connection_string is not None
            cs = parse_connection_string(conn.connection_string)
            kwargs.update(cs.client_kwargs())
            credential = cs.credential()
            if credential is not None:
                return credential, kwargs, None  # belongs to this connection alone
            cred_key: tuple = ("default", ())
        else:
            cred_key = (cred.type, cred.settings)
        entry = self._shared.get(cred_key)
        if entry is None:
            entry = (_create(cred_key[0], dict(cred_key[1])), 0)
        self._shared[cred_key] = (entry[0], entry[1] + 1)
        return entry[0], kwargs, cred_key

    async def release(self, credential: Any, key: tuple | None) -> None:
        """The connection using ``credential`` stopped; close it when nobody else uses it."""
        if key is None:
            await close_credential(credential)
            return
        entry = self._shared.get(key)
        if entry is None:
            return
        if entry[1] <= 1:
            del self._shared[key]
            await close_credential(entry[0])
        else:
            self._shared[key] = (entry[0], entry[1] - 1)


def _create(kind: str, settings: dict[str, str]) -> Any:
    from azure.identity import aio as identity

    if kind == "managed_identity":
        # Arc-enabled servers, Azure VMs, App Service/Functions, AKS pod identity: azure-identity picks
        # the endpoint from the environment (IDENTITY_ENDPOINT, IMDS_ENDPOINT, ...).
        return identity.ManagedIdentityCredential(client_id=settings.get("client_id"))
    if kind == "workload_identity":
        # Kubernetes workload identity: AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_FEDERATED_TOKEN_FILE
        # are injected by the webhook; the file's keys override them.
        return identity.WorkloadIdentityCredential(
            tenant_id=settings.get("tenant_id"), client_id=settings.get("client_id"), token_file_path=settings.get("token_file"),
        )
    if kind == "client_secret":
        kwargs = {"authority": settings["authority"]} if settings.get("authority") else {}
        return identity.ClientSecretCredential(settings["tenant_id"], settings["client_id"],
                                               os.environ[settings["client_secret_env"]], **kwargs)
    return identity.DefaultAzureCredential(
        exclude_interactive_browser_credential=True, managed_identity_client_id=settings.get("managed_identity_client_id"),
    )
