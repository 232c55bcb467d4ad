"""Relay connection strings, parsed the way ``Microsoft.Azure.Relay.RelayConnectionStringBuilder`` does.

Keys (case-insensitive, ``;``-separated ``Key=Value`` pairs):

=============================  =====================================================================
``Endpoint``                   ``sb://{namespace}.servicebus.windows.net/`` (required). A ``ws://`` or
                               ``http://`` endpoint means plain, unencrypted sockets (local emulator
                               started with ``--no-tls`` only).
``EntityPath``                 the hybrid connection name (may contain ``/``)
``SharedAccessKeyName``        SAS rule name; needs ``SharedAccessKey``
``SharedAccessKey``            SAS key (the string shown in the portal, not base64-decoded)
``SharedAccessSignature``      a ready ``SharedAccessSignature sr=...`` token; cannot be combined
                               with a key name or key
``Authentication``             ``Managed Identity`` (also ``ManagedIdentity``) to use the Azure
                               managed identity (``azure.identity.aio.ManagedIdentityCredential``)
``ManagedIdentityClientId``    client id of a user-assigned identity (this library's addition)
``OperationTimeout``           ``hh:mm:ss`` or seconds; default timeout for opening and connecting
``UseDevelopmentEmulator``     ``true`` marks a string for the local Relay emulator (this library's
                               addition, named after the Service Bus emulator's key); see below
``TrustedCaFile``              CA bundle (PEM) to trust, e.g. the emulator's ``ca.pem``; only
                               together with ``UseDevelopmentEmulator=true`` (this library's addition)
=============================  =====================================================================

``UseDevelopmentEmulator=true`` means:

* the endpoint is the emulator's ``host:port``, usually loopback (``sb://127.0.0.1:8443/``,
  ``sb://localhost:8443/``); an endpoint without a port uses 443;
* TLS stays on, with the host name checked as for Azure, and the certificate is verified against
  ``TrustedCaFile`` (the emulator's ``ca.pem``; without it, against the system's CAs). A
  ``ws://host:port/`` endpoint instead means an emulator started with ``--no-tls``;
* nothing else changes: SAS keys, signatures and ``Authentication=Managed Identity`` (point
  ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` at the emulator's identity endpoint) work as in Azure.

``TrustedCaFile`` is refused without it, so that a production string can never quietly trust a
development CA. So the same code talks to Azure or to the emulator by configuration alone::

    Endpoint=sb://contoso.servicebus.windows.net/;EntityPath=orders;Authentication=Managed Identity
    Endpoint=sb://127.0.0.1:8443/;EntityPath=orders;SharedAccessKeyName=send-orders;SharedAccessKey=...;UseDevelopmentEmulator=true;TrustedCaFile=/tmp/emu/ca.pem

Unknown keys raise ``ValueError`` naming the key. Keys and signatures never appear in reprs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["RelayConnectionString", "parse_connection_string"]

_KEYS = {
    "endpoint": "endpoint",
    "entitypath": "entity_path",
    "sharedaccesskeyname": "shared_access_key_name",
    "sharedaccesskey": "shared_access_key",
    "sharedaccesssignature": "shared_access_signature",
    "authentication": "authentication",
    "managedidentityclientid": "managed_identity_client_id",
    "operationtimeout": "operation_timeout",
    "usedevelopmentemulator": "use_development_emulator",
    "trustedcafile": "trusted_ca_file",
}
_MANAGED_IDENTITY = {"managed identity", "managedidentity"}
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass(slots=True)
class RelayConnectionString:
    """A parsed connection string. Build one with :func:`parse_connection_string` or :meth:`parse`."""

    endpoint: str
    entity_path: str | None = None
    shared_access_key_name: str | None = None
    shared_access_key: str | None = field(default=None, repr=False)
    shared_access_signature: str | None = field(default=None, repr=False)
    authentication: str | None = None
    managed_identity_client_id: str | None = None
    operation_timeout: float | None = None
    use_development_emulator: bool = False
    trusted_ca_file: str | None = None

    @classmethod
    def parse(cls, text: str) -> RelayConnectionString:
        return parse_connection_string(text)

    @property
    def uses_managed_identity(self) -> bool:
        return (self.authentication or "").strip().lower() in _MANAGED_IDENTITY

    @property
    def use_tls(self) -> bool:
        """False only for a ``ws://``/``http://`` endpoint (plain-text emulator)."""
        return urlsplit(self.endpoint).scheme.lower() not in ("ws", "http")

    def address(self, entity_path: str | None = None) -> str:
        """``sb://host[:port]/{entity}`` (``ws://`` for a plain endpoint); ``entity_path`` overrides EntityPath."""
        entity = entity_path or self.entity_path
        if not entity:
            raise ValueError("the connection string has no EntityPath and no entity path was given")
        if entity_path and self.entity_path and entity_path.strip("/") != self.entity_path.strip("/"):
            raise ValueError("the connection string already names EntityPath; do not pass another entity path")
        parts = urlsplit(self.endpoint)
        scheme = "ws" if not self.use_tls else "sb"
        return f"{scheme}://{parts.netloc}/{entity.strip('/')}"

    def credential(self) -> Any:
        """The credential the connection string describes, or ``None`` when it names none.

        ``AzureNamedKeyCredential`` for key name + key, ``AzureSasCredential`` for a signature,
        ``azure.identity.aio.ManagedIdentityCredential`` for ``Authentication=Managed Identity``.
        """
        from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential

        if self.shared_access_key_name:
            return AzureNamedKeyCredential(self.shared_access_key_name, self.shared_access_key or "")
        if self.shared_access_signature:
            return AzureSasCredential(self.shared_access_signature)
        if self.uses_managed_identity:
            try:
                from azure.identity.aio import ManagedIdentityCredential
            except ImportError as exc:
                from ._hints import missing_identity_message

                raise ModuleNotFoundError(missing_identity_message("Authentication=Managed Identity"),
                                          name="azure.identity") from exc

            if self.managed_identity_client_id:
                return ManagedIdentityCredential(client_id=self.managed_identity_client_id)
            return ManagedIdentityCredential()
        return None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the client/listener constructors (``connection_verify``, ``operation_timeout``).

        ``TrustedCaFile`` is made absolute here; a file that does not exist raises ``FileNotFoundError``
        naming the absolute path (and the current directory, when the given path was relative).
        """
        kwargs: dict[str, Any] = {}
        if self.trusted_ca_file:
            kwargs["connection_verify"] = resolve_ca_file(self.trusted_ca_file, "TrustedCaFile")
        if self.operation_timeout is not None:
            kwargs["operation_timeout"] = self.operation_timeout
        return kwargs


def resolve_ca_file(path: str, origin: str) -> str:
    """``path`` made absolute (against the current directory), or ``FileNotFoundError`` naming both forms.

    A relative ``TrustedCaFile=.local/emulator/ca.pem`` only works from the folder it is relative
    to; saying where it was looked for tells the user which.
    """
    absolute = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(absolute):
        relative = f" ({path!r} is relative to the current directory {os.getcwd()})" if not os.path.isabs(path) else ""
        raise FileNotFoundError(
            f"{origin}: the CA file {absolute} does not exist{relative}; give the absolute path of the emulator's "
            "ca.pem (printed as ca_cert when it starts)"
        )
    return absolute


def _parse_timeout(value: str) -> float:
    value = value.strip()
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2}(?:\.\d+)?)", value)
    if match:
        days, hours, minutes, seconds = match.groups()
        return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"OperationTimeout {value!r} is neither hh:mm:ss nor a number of seconds") from None
    if seconds <= 0:
        raise ValueError("OperationTimeout must be positive")
    return seconds


def parse_connection_string(text: str) -> RelayConnectionString:
    """Parse a Relay connection string; raises ``ValueError`` naming the offending key.

    Rules (as .NET): ``Endpoint`` is required and must be ``sb://`` (or ``ws://``/``http://`` for a
    plain emulator); ``SharedAccessSignature`` cannot be combined with ``SharedAccessKeyName`` or
    ``SharedAccessKey``; a key name needs a key and vice versa; ``Authentication=Managed Identity``
    cannot be combined with SAS keys.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the connection string is empty")
    values: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"connection string part {name.strip()!r} has no '='")
        key = name.strip().lower()
        attr = _KEYS.get(key)
        if attr is None:
            raise ValueError(
                f"unknown connection string key {name.strip()!r}; known keys: Endpoint, EntityPath, SharedAccessKeyName, "
                "SharedAccessKey, SharedAccessSignature, Authentication, ManagedIdentityClientId, OperationTimeout, "
                "UseDevelopmentEmulator, TrustedCaFile"
            )
        if attr in values:
            raise ValueError(f"connection string key {name.strip()!r} appears twice")
        values[attr] = value.strip()

    endpoint = values.get("endpoint")
    if not endpoint:
        raise ValueError("the connection string needs Endpoint=sb://{namespace}.servicebus.windows.net/")
    scheme = urlsplit(endpoint).scheme.lower()
    if scheme not in ("sb", "ws", "http") or not urlsplit(endpoint).hostname:
        raise ValueError(f"Endpoint must look like sb://{{namespace}}.servicebus.windows.net/, got scheme {scheme or 'none'!r}")

    result = RelayConnectionString(endpoint=endpoint)
    result.entity_path = values.get("entity_path") or None
    result.shared_access_key_name = values.get("shared_access_key_name") or None
    result.shared_access_key = values.get("shared_access_key") or None
    result.shared_access_signature = values.get("shared_access_signature") or None
    result.authentication = values.get("authentication") or None
    result.managed_identity_client_id = values.get("managed_identity_client_id") or None
    result.trusted_ca_file = values.get("trusted_ca_file") or None
    if "operation_timeout" in values:
        result.operation_timeout = _parse_timeout(values["operation_timeout"])
    if "use_development_emulator" in values:
        flag = values["use_development_emulator"].lower()
        if flag not in _TRUE | _FALSE:
            raise ValueError(f"UseDevelopmentEmulator must be true or false, got {values['use_development_emulator']!r}")
        result.use_development_emulator = flag in _TRUE

    if result.shared_access_signature and (result.shared_access_key_name or result.shared_access_key):
        raise ValueError("SharedAccessSignature cannot be combined with SharedAccessKeyName or SharedAccessKey")
    if bool(result.shared_access_key_name) != bool(result.shared_access_key):
        missing = "SharedAccessKey" if result.shared_access_key_name else "SharedAccessKeyName"
        raise ValueError(f"the connection string has a SAS key name or key without the other: add {missing}")
    if result.authentication is not None:
        if not result.uses_managed_identity:
            raise ValueError(f"Authentication={result.authentication!r} is not supported; use 'Managed Identity'")
        if result.shared_access_key_name or result.shared_access_signature:
            raise ValueError("Authentication=Managed Identity cannot be combined with SAS keys or signatures")
    if result.managed_identity_client_id and not result.uses_managed_identity:
        raise ValueError("ManagedIdentityClientId needs Authentication=Managed Identity")
    if result.trusted_ca_file and not result.use_development_emulator:
        raise ValueError(
            "TrustedCaFile is only for the local emulator: add UseDevelopmentEmulator=true "
            "(Azure endpoints are verified against the system's CAs)"
        )
    return result
