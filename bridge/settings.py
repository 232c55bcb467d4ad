"""Every app setting the bridge reads, validated in one place.

:func:`load_settings` turns the environment (app settings in Azure, ``local.settings.json``
values locally) into a frozen :class:`Settings`. A missing or malformed value raises
:class:`SettingsError` whose message names the setting and says what to set, so a
misconfigured app fails on its first invocation with one clear line. The names are the
ones in ``README.md (Configuration reference)``; :data:`SETTING_NAMES` lists every name the app reads (the infra
consistency test compares it with ``infra/main.bicep`` and ``local.settings.sample.json``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .routing import Route, RoutingError, parse_routes, validate_queue_name

RELAY_NAMESPACE = "RELAY_NAMESPACE"
RELAY_CA_FILE = "RELAY_CA_FILE"
RELAY_CLIENT_ID = "RELAY_CLIENT_ID"
RELAY_OUTBOUND_CONNECTIONS = "RELAY_OUTBOUND_CONNECTIONS"
RELAY_DEFAULT_CONNECTION = "RELAY_DEFAULT_CONNECTION"
RELAY_INBOUND_CONNECTIONS = "RELAY_INBOUND_CONNECTIONS"
INBOUND_ROUTES = "INBOUND_ROUTES"
INBOUND_DEFAULT_QUEUE = "INBOUND_DEFAULT_QUEUE"
CLAIM_CHECK_CONTAINER = "CLAIM_CHECK_CONTAINER"
LISTENER_WINDOW_SECONDS = "LISTENER_WINDOW_SECONDS"
RELAY_LISTENERS_PER_CONNECTION = "RELAY_LISTENERS_PER_CONNECTION"
INBOUND_MAX_BODY_BYTES = "INBOUND_MAX_BODY_BYTES"
INBOUND_MAX_CONCURRENT_REQUESTS = "INBOUND_MAX_CONCURRENT_REQUESTS"
INBOUND_MAX_WS_STREAMS = "INBOUND_MAX_WS_STREAMS"
INBOUND_WS_IDLE_SECONDS = "INBOUND_WS_IDLE_SECONDS"

STORAGE_CONNECTION = "BridgeStorage"
"""Connection prefix of the app's own queues and blobs (also the queue trigger's ``connection``)."""
STORAGE_QUEUE_URI = f"{STORAGE_CONNECTION}__queueServiceUri"
STORAGE_BLOB_URI = f"{STORAGE_CONNECTION}__blobServiceUri"
STORAGE_CREDENTIAL = f"{STORAGE_CONNECTION}__credential"
STORAGE_CLIENT_ID = f"{STORAGE_CONNECTION}__clientId"

SETTING_NAMES: tuple[str, ...] = (
    RELAY_NAMESPACE,
    RELAY_CA_FILE,
    RELAY_CLIENT_ID,
    RELAY_OUTBOUND_CONNECTIONS,
    RELAY_DEFAULT_CONNECTION,
    RELAY_INBOUND_CONNECTIONS,
    INBOUND_ROUTES,
    INBOUND_DEFAULT_QUEUE,
    CLAIM_CHECK_CONTAINER,
    LISTENER_WINDOW_SECONDS,
    RELAY_LISTENERS_PER_CONNECTION,
    INBOUND_MAX_BODY_BYTES,
    INBOUND_MAX_CONCURRENT_REQUESTS,
    INBOUND_MAX_WS_STREAMS,
    INBOUND_WS_IDLE_SECONDS,
    STORAGE_CONNECTION,
    STORAGE_QUEUE_URI,
    STORAGE_BLOB_URI,
    STORAGE_CREDENTIAL,
    STORAGE_CLIENT_ID,
)
"""Every setting the app code reads (the host reads ``AzureWebJobsStorage*`` itself)."""

HOST_SETTING_NAMES: tuple[str, ...] = (
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
)
"""Settings the Functions host and the Durable extension read (documented in the same table)."""

OUTBOUND_QUEUE = "relay-outbound"
OUTBOUND_POISON_QUEUE = "relay-outbound-poison"
"""The host's own poison queue: raw messages it moved after maxDequeueCount failed attempts."""
OUTBOUND_FAILED_QUEUE = "relay-outbound-failed"
"""The app's failure records (JSON with the reason and the original message), apart from the host's raw moves."""

DEFAULT_INBOUND_QUEUE = "relay-inbound"
DEFAULT_CLAIM_CHECK_CONTAINER = "relay-claimcheck"
DEFAULT_LISTENER_WINDOW = 300
MIN_LISTENER_WINDOW = 5
MAX_LISTENER_WINDOW = 540
"""9 minutes: a window plus its close (10 s), drain (5 s) and report ends inside the 10-minute grace a Flex or
Premium instance gets when a platform update drains it (and well inside host.json's functionTimeout, 30 min);
a longer window would be killed mid-way by every platform update and re-run late, or lost when it is B."""
DEFAULT_LISTENERS_PER_CONNECTION = 1
MAX_LISTENERS_PER_CONNECTION = 25
"""Relay accepts at most 25 listeners per hybrid connection; each orchestration keeps up to three connected
during a handover, so more than 8 leaves no headroom (the setting allows what Relay allows)."""

# Inbound limits per listener window: (default, minimum, maximum). Worst-case body memory of a
# window is INBOUND_MAX_CONCURRENT_REQUESTS x INBOUND_MAX_BODY_BYTES (16 x 16 MiB = 256 MiB).
INBOUND_LIMITS: dict[str, tuple[int, int, int]] = {
    INBOUND_MAX_BODY_BYTES: (16 * 1024 * 1024, 1024, 256 * 1024 * 1024),
    INBOUND_MAX_CONCURRENT_REQUESTS: (16, 1, 1000),
    INBOUND_MAX_WS_STREAMS: (100, 0, 10000),
    INBOUND_WS_IDLE_SECONDS: (120, 1, 3600),
}
""":data:`INBOUND_LIMITS` values are whole numbers; the README's configuration reference documents them."""

_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*(?::\d{1,5})?$")
_ENTITY = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,258}[A-Za-z0-9])?$")
_CONTAINER = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class SettingsError(ValueError):
    """An app setting is missing or malformed; the message names it and says what to set."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"app setting {setting}: {problem}")
        self.setting = setting


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Where the app's queues and blobs live: a connection string, or service URIs plus managed identity."""

    connection_string: str | None = None
    queue_service_uri: str | None = None
    blob_service_uri: str | None = None
    client_id: str | None = None

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None

    def __repr__(self) -> str:  # a connection string may hold an account key
        where = "connection string" if self.connection_string else f"{self.queue_service_uri}, {self.blob_service_uri}"
        return f"StorageSettings({where})"


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated configuration of the bridge (see README.md (Configuration reference) for each field's setting)."""

    relay_namespace: str
    relay_ca_file: str | None
    relay_client_id: str | None
    outbound_connections: tuple[str, ...]
    default_connection: str
    inbound_connections: tuple[str, ...]
    inbound_routes: tuple[Route, ...]
    inbound_default_queue: str
    claim_check_container: str
    listener_window_seconds: int
    storage: StorageSettings
    listeners_per_connection: int = DEFAULT_LISTENERS_PER_CONNECTION
    inbound_max_body_bytes: int = INBOUND_LIMITS[INBOUND_MAX_BODY_BYTES][0]
    inbound_max_concurrent_requests: int = INBOUND_LIMITS[INBOUND_MAX_CONCURRENT_REQUESTS][0]
    inbound_max_ws_streams: int = INBOUND_LIMITS[INBOUND_MAX_WS_STREAMS][0]
    inbound_ws_idle_seconds: int = INBOUND_LIMITS[INBOUND_WS_IDLE_SECONDS][0]

    def relay_address(self, connection: str) -> str:
        """``sb://{namespace}/{connection}``, the address the relay library takes."""
        return f"sb://{self.relay_namespace}/{connection}"

    @property
    def connection_verify(self) -> bool | str:
        """What to pass as ``connection_verify``: the CA file locally, system CAs in Azure."""
        return self.relay_ca_file or True


def _text(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or "").strip()


def _connections(env: Mapping[str, str], name: str, *, required: bool) -> tuple[str, ...]:
    raw = _text(env, name)
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if required and not names:
        raise SettingsError(name, "is missing; set it to a comma-separated list of hybrid connection names, e.g. 'orders,billing'")
    for item in names:
        if not _ENTITY.match(item) or "//" in item:
            raise SettingsError(name, f"{item!r} is not a valid hybrid connection name (letters, digits, '.', '_', '-', '/')")
    return names


def _namespace(env: Mapping[str, str]) -> str:
    value = _text(env, RELAY_NAMESPACE)
    if not value:
        raise SettingsError(
            RELAY_NAMESPACE,
            "is missing; set it to the Relay namespace host, e.g. 'contoso.servicebus.windows.net' "
            "(locally the emulator's '127.0.0.1:PORT')",
        )
    if "://" in value or "/" in value or not _HOST.match(value):
        raise SettingsError(
            RELAY_NAMESPACE,
            f"{value!r} is not a host name; set only the host (and port), e.g. 'contoso.servicebus.windows.net', "
            "without 'sb://' or a path",
        )
    return value


def _ca_file(env: Mapping[str, str]) -> str | None:
    value = _text(env, RELAY_CA_FILE)
    if not value:
        return None
    if not Path(value).is_file():
        raise SettingsError(
            RELAY_CA_FILE,
            f"file {value!r} does not exist (relative to {os.getcwd()}); set it to the emulator's ca.pem or leave it empty in Azure",
        )
    return value


def _client_id(env: Mapping[str, str], name: str) -> str | None:
    value = _text(env, name)
    if value and not _GUID.match(value):
        raise SettingsError(name, f"{value!r} is not a client id (a GUID); set the user-assigned identity's client id or leave it empty")
    return value or None


def _window(env: Mapping[str, str]) -> int:
    raw = _text(env, LISTENER_WINDOW_SECONDS)
    if not raw:
        return DEFAULT_LISTENER_WINDOW
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(LISTENER_WINDOW_SECONDS, f"{raw!r} is not a whole number of seconds") from None
    if not MIN_LISTENER_WINDOW <= value <= MAX_LISTENER_WINDOW:
        raise SettingsError(
            LISTENER_WINDOW_SECONDS,
            f"{value} is out of range; set {MIN_LISTENER_WINDOW}-{MAX_LISTENER_WINDOW} seconds "
            "(a window must end inside the 10-minute grace of a platform update, and below host.json functionTimeout)",
        )
    return value


def _whole_number(env: Mapping[str, str], name: str, default: int, low: int, high: int, why: str = "") -> int:
    """A whole-number setting within ``low``-``high`` (``default`` when empty); ``why`` explains the range."""
    raw = _text(env, name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not a whole number; set {low}-{high} or leave it empty for {default}") from None
    if not low <= value <= high:
        raise SettingsError(name, f"{value} is out of range; set {low}-{high} or leave it empty for {default}{why}")
    return value


def _storage(env: Mapping[str, str]) -> StorageSettings:
    conn = _text(env, STORAGE_CONNECTION)
    if conn:
        return StorageSettings(connection_string=conn)
    queue_uri, blob_uri = _text(env, STORAGE_QUEUE_URI), _text(env, STORAGE_BLOB_URI)
    if not queue_uri and not blob_uri:
        raise SettingsError(
            STORAGE_CONNECTION,
            f"is missing; set {STORAGE_CONNECTION} to a connection string (locally 'UseDevelopmentStorage=true') "
            f"or, in Azure, {STORAGE_QUEUE_URI} and {STORAGE_BLOB_URI} for the managed identity",
        )
    for name, value in ((STORAGE_QUEUE_URI, queue_uri), (STORAGE_BLOB_URI, blob_uri)):
        if not value:
            raise SettingsError(name, f"is missing; set it too when using the identity-based form of {STORAGE_CONNECTION}")
        if not value.startswith("https://"):
            raise SettingsError(name, f"{value!r} must be an https:// service URI (token credentials need HTTPS)")
    credential = _text(env, STORAGE_CREDENTIAL)
    if credential and credential.lower() != "managedidentity":
        raise SettingsError(STORAGE_CREDENTIAL, f"{credential!r} is not supported; set 'managedidentity' or leave it empty")
    client_id = _client_id(env, STORAGE_CLIENT_ID)
    return StorageSettings(queue_service_uri=queue_uri.rstrip("/"), blob_service_uri=blob_uri.rstrip("/"), client_id=client_id)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting from ``env`` (default ``os.environ``); raises :class:`SettingsError`."""
    env = os.environ if env is None else env
    namespace = _namespace(env)
    outbound = _connections(env, RELAY_OUTBOUND_CONNECTIONS, required=True)
    default = _text(env, RELAY_DEFAULT_CONNECTION) or outbound[0]
    if default not in outbound:
        raise SettingsError(
            RELAY_DEFAULT_CONNECTION, f"{default!r} is not in {RELAY_OUTBOUND_CONNECTIONS} ({', '.join(outbound)}); add it there or pick one of them"
        )
    inbound = _connections(env, RELAY_INBOUND_CONNECTIONS, required=False)
    raw_routes = _text(env, INBOUND_ROUTES)
    try:
        routes = parse_routes(json.loads(raw_routes)) if raw_routes else ()
    except json.JSONDecodeError as exc:
        raise SettingsError(INBOUND_ROUTES, f"is not valid JSON ({exc.msg} at character {exc.pos}); set a JSON list of rules") from None
    except RoutingError as exc:
        raise SettingsError(INBOUND_ROUTES, str(exc)) from None
    default_queue = _text(env, INBOUND_DEFAULT_QUEUE) or DEFAULT_INBOUND_QUEUE
    try:
        validate_queue_name(default_queue)
    except RoutingError as exc:
        raise SettingsError(INBOUND_DEFAULT_QUEUE, str(exc)) from None
    container = _text(env, CLAIM_CHECK_CONTAINER) or DEFAULT_CLAIM_CHECK_CONTAINER
    if not _CONTAINER.match(container):
        raise SettingsError(CLAIM_CHECK_CONTAINER, f"{container!r} is not a valid blob container name (3-63 lowercase letters, digits, '-')")
    return Settings(
        relay_namespace=namespace,
        relay_ca_file=_ca_file(env),
        relay_client_id=_client_id(env, RELAY_CLIENT_ID),
        outbound_connections=outbound,
        default_connection=default,
        inbound_connections=inbound,
        inbound_routes=routes,
        inbound_default_queue=default_queue,
        claim_check_container=container,
        listener_window_seconds=_window(env),
        storage=_storage(env),
        listeners_per_connection=_whole_number(
            env, RELAY_LISTENERS_PER_CONNECTION, DEFAULT_LISTENERS_PER_CONNECTION, 1, MAX_LISTENERS_PER_CONNECTION,
            " (Relay accepts at most 25 listeners per hybrid connection)"),
        inbound_max_body_bytes=_whole_number(env, INBOUND_MAX_BODY_BYTES, *INBOUND_LIMITS[INBOUND_MAX_BODY_BYTES]),
        inbound_max_concurrent_requests=_whole_number(env, INBOUND_MAX_CONCURRENT_REQUESTS, *INBOUND_LIMITS[INBOUND_MAX_CONCURRENT_REQUESTS]),
        inbound_max_ws_streams=_whole_number(env, INBOUND_MAX_WS_STREAMS, *INBOUND_LIMITS[INBOUND_MAX_WS_STREAMS]),
        inbound_ws_idle_seconds=_whole_number(env, INBOUND_WS_IDLE_SECONDS, *INBOUND_LIMITS[INBOUND_WS_IDLE_SECONDS]),
    )


_cached: tuple[tuple, Settings] | None = None

_ENVIRON = os.environ
_RAW_NAMES = tuple(_ENVIRON.encodekey(name) for name in SETTING_NAMES)  # type: ignore[attr-defined]


def _watched_values() -> tuple:
    """The raw values of every watched setting: a cheap fingerprint of the environment.

    Called on every invocation, so it reads ``os.environ``'s own store (encoded name -> encoded
    value, CPython's ``os._Environ._data``) with one dict lookup per name: a tenth of the cost
    of 20 ``os.environ.get`` calls, which encode each name and decode each value. Every change
    made through ``os.environ`` (app code, ``monkeypatch.setenv``) lands in that store, so it is
    seen just the same. When ``os.environ`` was replaced by another mapping, it is read directly.
    """
    env = os.environ
    if env is _ENVIRON:
        get = env._data.get  # type: ignore[attr-defined]
        return tuple([get(name) for name in _RAW_NAMES])
    return tuple([env.get(name) for name in SETTING_NAMES])


def get_settings() -> Settings:
    """The settings of this process, validated once and again only when a watched variable changes.

    In Azure the app settings are fixed for a worker process's life (changing one restarts it);
    the re-validation on change is for tests and local runs that edit the environment in place.
    :func:`bridge.reset_caches` forgets the cached value.
    """
    global _cached
    key = _watched_values()
    cached = _cached
    if cached is None or cached[0] != key:
        cached = _cached = (key, load_settings(os.environ))
    return cached[1]
