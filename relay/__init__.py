"""Azure Relay Hybrid Connections for Python: listener and sender, WebSocket and HTTP, Entra ID and SAS.

Microsoft ships .NET, Java and Node clients for Hybrid Connections; this is the Python one, on
asyncio and aiohttp. The public surface mirrors ``Microsoft.Azure.Relay``:

* :class:`HybridConnectionClient`: ``await client.request(...)`` (HTTP) and
  ``await client.connect(...)`` (WebSocket) to a hybrid connection;
* :class:`HybridConnectionListener`: accept WebSocket senders and answer HTTP requests;
* credentials: any azure-core token credential (Entra ID), ``AzureNamedKeyCredential`` /
  ``AzureSasCredential`` (SAS) or :class:`AadCallbackTokenProvider`;
* :func:`parse_connection_string` for ``Endpoint=sb://...;EntityPath=...`` strings;
* typed errors under :class:`RelayError` with ``is_transient``.

See relay/README.md for examples against Azure and the local emulator.
"""

__version__ = "0.1.0"
"""The one place the version lives: both distributions (packaging/) read it."""

from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential

from .client import HybridConnectionClient, RelayHttpResponse
from .connection_string import RelayConnectionString, parse_connection_string
from .credentials import AadCallbackTokenProvider, RelayToken, TokenProvider, get_token_provider, token_fetch_count
from .errors import (
    AuthorizationFailedError,
    ConnectionLostError,
    EndpointNotFoundError,
    ForbiddenError,
    NoListenerError,
    PayloadTooLargeError,
    QuotaExceededError,
    RejectedError,
    RelayError,
    RelayTimeoutError,
)
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .listener import AcceptContext, HybridConnectionListener, ListenerState, RelayedHttpRequest, RelayedHttpResponse
from .stream import HybridConnectionStream

__all__ = [
    "__version__",
    "AadCallbackTokenProvider",
    "AcceptContext",
    "AuthorizationFailedError",
    "AzureNamedKeyCredential",
    "AzureSasCredential",
    "ConnectionLostError",
    "EndpointNotFoundError",
    "ForbiddenError",
    "HybridConnectionClient",
    "HybridConnectionListener",
    "HybridConnectionStream",
    "ListenerState",
    "NoListenerError",
    "PayloadTooLargeError",
    "QuotaExceededError",
    "RejectedError",
    "RelayConnectionString",
    "RelayError",
    "RelayHttpResponse",
    "RelayTimeoutError",
    "RelayToken",
    "RelayedHttpRequest",
    "RelayedHttpResponse",
    "TokenProvider",
    "get_token_provider",
    "parse_connection_string",
    "token_fetch_count",
]

_LISTENER_NAMES = frozenset({"AcceptContext", "HybridConnectionListener", "ListenerState", "RelayedHttpRequest", "RelayedHttpResponse"})


def __getattr__(name: str):
    # The listener side (with its HTTP serving and rendezvous modules) is imported on first use:
    # a sender-only process, such as the Functions app's send path, never pays for it (cold start).
    if name in _LISTENER_NAMES:
        from . import listener

        value = getattr(listener, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'relay' has no attribute {name!r}")
