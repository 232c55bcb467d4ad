"""Tokens for Hybrid Connections: one cache per credential, refreshed ahead of expiry.

Any credential an Azure SDK client takes works here:

* an azure-core ``AsyncTokenCredential`` (``azure.identity.aio.ManagedIdentityCredential``,
  ``DefaultAzureCredential``, ...) or a sync ``TokenCredential`` (run in a worker thread so the
  event loop never blocks): tokens are requested for scope ``https://relay.azure.net/.default``
  and sent as the bare JWT, as the .NET client does;
* ``AzureNamedKeyCredential(key_name, key)``: a SAS token is signed locally for the
  hybrid connection (``relay.sas.sas_resource_uri``), valid for one hour;
* ``AzureSasCredential(signature)``: a fixed ``SharedAccessSignature ...`` string, sent as is;
* :class:`AadCallbackTokenProvider`: your own callback, like .NET's
  ``TokenProvider.CreateAzureActiveDirectoryTokenProvider``;
* ``None``: no token (anonymous senders, when the hybrid connection allows them).

:func:`get_token_provider` returns the same :class:`TokenProvider` for the same credential
object, so every client and listener built on one credential shares one cache: a token is
fetched once, refreshed a little before it expires (10 % of its lifetime, at most four
minutes, which is inside azure-identity's own five-minute refresh window), and however many
callers ask at the same moment only one fetch is in flight. Tokens never appear in reprs,
logs or exception messages.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Union

from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential

from . import tracing
from .sas import RELAY_SCOPE, generate_sas_token, is_sas_token, sas_resource_uri, token_expiry

__all__ = [
    "AadCallbackTokenProvider",
    "RelayToken",
    "TokenProvider",
    "get_token_provider",
    "token_fetch_count",
    "RELAY_AUDIENCE_URI",
    "SAS_TOKEN_TTL",
]

_log = logging.getLogger(__name__)

RELAY_AUDIENCE_URI = "https://relay.azure.net/"
"""The audience .NET hands to Entra callbacks (``AuthenticationCallback(audience, authority, state)``)."""

SAS_TOKEN_TTL = 3600.0
"""Lifetime of SAS tokens signed from a key (the .NET and Node default)."""

MAX_REFRESH_MARGIN = 240.0
"""Refresh at most this many seconds before expiry (azure-identity serves its cached token until 300 s before)."""

_UNKNOWN_LIFETIME = 3600.0

_fetch_total = 0


def token_fetch_count() -> int:
    """How many tokens all providers in this process have fetched or signed (for benchmarks and tests)."""
    return _fetch_total


def refresh_margin(lifetime: float) -> float:
    """Seconds before expiry at which a token of ``lifetime`` seconds is replaced."""
    return min(MAX_REFRESH_MARGIN, max(0.0, lifetime) * 0.1)


@dataclass(frozen=True, slots=True)
class RelayToken:
    """A token string with its expiry (Unix time) and the time it should be replaced."""

    token: str
    expires_on: float
    refresh_at: float

    def __repr__(self) -> str:  # the token itself is the secret
        return f"RelayToken(expires_on={self.expires_on:.0f}, refresh_at={self.refresh_at:.0f})"

    __str__ = __repr__


AuthCallback = Callable[[str, Union[str, None], Any], Union[str, Awaitable[str], Any]]


class AadCallbackTokenProvider:
    """Tokens from your own callback, mirroring .NET ``CreateAzureActiveDirectoryTokenProvider``.

    ``callback(audience, authority, state)`` is called with ``audience="https://relay.azure.net/"``
    and must return the JWT (a ``str``, or an object with ``.token``/``.expires_on`` such as an
    azure-core ``AccessToken``), synchronously or as an awaitable. The expiry is read from the JWT's
    ``exp`` claim; tokens whose expiry cannot be read are treated as valid for one hour.
    """

    __slots__ = ("callback", "authority", "state", "__weakref__")

    def __init__(self, callback: AuthCallback, authority: str | None = None, state: Any = None):
        if not callable(callback):
            raise TypeError("AadCallbackTokenProvider needs a callable callback(audience, authority, state)")
        self.callback = callback
        self.authority = authority
        self.state = state

    def __repr__(self) -> str:
        return f"AadCallbackTokenProvider(authority={self.authority!r})"


class TokenProvider:
    """Token cache for one credential. Get one with :func:`get_token_provider`.

    ``await provider.get_token(address)`` returns a :class:`RelayToken` for the hybrid connection
    at ``address`` (``sb://host/entity``); the address only matters for SAS keys, which are signed
    per entity. ``kind`` is ``"entra"``, ``"sas-key"``, ``"sas"`` or ``"none"``; ``describe()``
    names the credential in plain words for messages and the CLI. ``fetch_count`` counts the tokens
    this provider obtained.
    """

    def __init__(self, credential: Any):
        self._credential = credential
        self._cache: dict[str, RelayToken] = {}
        self._keys: dict[str, str] = {}  # address -> cache key (the SAS audience), computed once
        self._inflight: dict[str, asyncio.Future] = {}
        self.fetch_count = 0
        if credential is None:
            self.kind = "none"
        elif isinstance(credential, AzureNamedKeyCredential):
            self.kind = "sas-key"
        elif isinstance(credential, AzureSasCredential):
            self.kind = "sas"
        elif isinstance(credential, AadCallbackTokenProvider):
            self.kind = "entra"
        elif hasattr(credential, "get_token"):
            self.kind = "entra"
        else:
            raise TypeError(
                f"unsupported credential type {type(credential).__name__}: pass an azure-core TokenCredential "
                "or AsyncTokenCredential, AzureNamedKeyCredential, AzureSasCredential or AadCallbackTokenProvider"
            )
        self._is_async = self.kind == "entra" and not isinstance(credential, AadCallbackTokenProvider) and (
            inspect.iscoroutinefunction(getattr(credential, "get_token", None))
        )

    @property
    def credential(self) -> Any:
        """The credential object this cache belongs to."""
        return self._credential

    def __repr__(self) -> str:
        return f"TokenProvider({self.describe()})"

    def describe(self) -> str:
        """The credential in plain words, e.g. ``"SAS key 'send-orders'"`` or ``"ManagedIdentityCredential"``."""
        cred = self._credential
        if self.kind == "none":
            return "no credential (anonymous)"
        if self.kind == "sas-key":
            return f"SAS key '{cred.named_key.name}'"
        if self.kind == "sas":
            return "fixed SharedAccessSignature"
        return type(cred).__name__

    def _cache_key(self, address: str) -> str:
        # Entra tokens are per identity, not per entity; SAS tokens are signed for one entity.
        if self.kind != "sas-key":
            return ""
        key = self._keys.get(address)
        if key is None:
            if len(self._keys) >= _MAX_KEYS:  # bounded: a process that talks to many entities
                self._keys.clear()
            key = self._keys[address] = sas_resource_uri(address)
        return key

    async def get_token(self, address: str) -> RelayToken | None:  # noqa: D401
        """A valid token for ``address``; ``None`` for anonymous. Concurrent callers share one fetch."""
        if self.kind == "none":
            return None
        with tracing.span(tracing.TOKEN_ACQUISITION, attributes={"relay.credential": self.kind}) as span:
            key = self._cache_key(address)
            cached = self._cache.get(key)
            now = time.time()
            if cached is not None and now < cached.refresh_at:
                span.set_attribute("relay.token.cache_hit", True)
                return cached
            span.set_attribute("relay.token.cache_hit", False)  # a fetch, or joining one in flight
            task = self._inflight.get(key)
            if task is None:
                # The fetch runs in its own task so that a caller being cancelled never fails the others.
                task = asyncio.get_running_loop().create_task(self._refresh(key, address, cached))
                self._inflight[key] = task
                task.add_done_callback(_retrieve_exception)
            return await asyncio.shield(task)

    async def _refresh(self, key: str, address: str, cached: RelayToken | None) -> RelayToken:
        try:
            token = await self._fetch(address)
        except Exception as exc:
            if cached is not None and time.time() < cached.expires_on:
                # The old token is still good: keep serving it and try again on the next call.
                _log.warning(
                    "token refresh with %s failed (%s); the current token stays in use", self.describe(), type(exc).__name__
                )
                return cached
            raise
        finally:
            self._inflight.pop(key, None)
        self._cache[key] = token
        return token

    def invalidate(self, address: str = "") -> None:
        """Forget the cached token (after the service refused it) so the next call fetches a new one."""
        self._cache.pop(self._cache_key(address), None)

    async def _fetch(self, address: str) -> RelayToken:
        global _fetch_total
        cred = self._credential
        if self.kind == "sas-key":
            name, key = cred.named_key
            now = time.time()
            text = generate_sas_token(sas_resource_uri(address), name, key, ttl=SAS_TOKEN_TTL, now=now)
            expires = float(int(now + SAS_TOKEN_TTL))
        elif self.kind == "sas":
            text = cred.signature
            if not is_sas_token(text):
                raise ValueError("AzureSasCredential must hold a 'SharedAccessSignature sr=...&sig=...&se=...&skn=...' string")
            expires = token_expiry(text) or (time.time() + _UNKNOWN_LIFETIME)
            now = time.time()
            # A fixed signature cannot be renewed: re-read it (``update()``) only when it expires.
            self.fetch_count += 1
            _fetch_total += 1
            return RelayToken(text, expires, max(expires, now + 1.0))
        elif isinstance(cred, AadCallbackTokenProvider):
            now = time.time()
            result = cred.callback(RELAY_AUDIENCE_URI, cred.authority, cred.state)
            if inspect.isawaitable(result):
                result = await result
            text, expires = _token_and_expiry(result)
        else:
            now = time.time()
            if self._is_async:
                result = await cred.get_token(RELAY_SCOPE)
            else:
                result = await asyncio.to_thread(cred.get_token, RELAY_SCOPE)
                if inspect.isawaitable(result):
                    result = await result
            text, expires = _token_and_expiry(result)
        self.fetch_count += 1
        _fetch_total += 1
        lifetime = max(0.0, expires - now)
        return RelayToken(text, expires, expires - refresh_margin(lifetime))


_MAX_KEYS = 1024
"""Addresses whose cache key a provider remembers (one per hybrid connection it serves)."""


def _retrieve_exception(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # waiters may all be gone; avoid "exception was never retrieved"


def _token_and_expiry(result: Any) -> tuple[str, float]:
    if isinstance(result, str):
        text, expires = result, token_expiry(result)
    elif hasattr(result, "token"):
        text = result.token
        expires = getattr(result, "expires_on", None) or token_expiry(text)
    else:
        raise TypeError(f"token callback returned {type(result).__name__}, expected a token string or AccessToken")
    if not isinstance(text, str) or not text:
        raise TypeError("token callback returned an empty token")
    if text.lower().startswith("bearer "):
        text = text[7:]  # the service expects the bare JWT, as .NET sends it
    return text, float(expires) if expires else time.time() + _UNKNOWN_LIFETIME


_providers: "weakref.WeakKeyDictionary[Any, TokenProvider]" = weakref.WeakKeyDictionary()
_providers_by_id: dict[int, tuple[Any, TokenProvider]] = {}
_registry_lock = threading.Lock()
_NONE_PROVIDER: TokenProvider | None = None


def get_token_provider(credential: Any) -> TokenProvider:
    """The shared :class:`TokenProvider` for ``credential`` (one per credential object, created on first use).

    Passing a :class:`TokenProvider` returns it unchanged.
    """
    global _NONE_PROVIDER
    if isinstance(credential, TokenProvider):
        return credential
    if credential is None:
        if _NONE_PROVIDER is None:
            _NONE_PROVIDER = TokenProvider(None)
        return _NONE_PROVIDER
    with _registry_lock:
        try:
            provider = _providers.get(credential)
        except TypeError:  # not weak-referenceable: keep it alive with its provider
            entry = _providers_by_id.get(id(credential))
            if entry is None:
                provider = TokenProvider(credential)
                _providers_by_id[id(credential)] = (credential, provider)
            else:
                provider = entry[1]
            return provider
        if provider is None:
            provider = TokenProvider(credential)
            _providers[credential] = provider
        return provider


async def close_credential(credential: Any) -> None:
    """Close ``credential`` if it has a ``close()`` (sync or async); errors are logged, not raised."""
    close = getattr(credential, "close", None)
    if close is None:
        return
    try:
        result = close()
        if inspect.isawaitable(result):
            await result
    except Exception as exc:  # closing must never fail a shutdown
        _log.debug("closing %s failed: %s", type(credential).__name__, type(exc).__name__)
