"""The agent's configuration file (TOML), environment overrides, and validation that names every bad key.

Layout (see ``deploy/agent.example.toml`` for every key with comments)::

    [agent]            log_format, log_level, drain_timeout
    [health]           enabled, host, port
    [tracing]          exporter (none | console | otlp), service_name
    [[connections]]    name, address, target, allow_paths, websockets, timeout, connect_timeout,
                       max_concurrency, max_websockets, ca_file
    [connections.credential]   type and its keys

Environment overrides (for containers) use ``RELAY_AGENT__`` and ``__`` between levels; a
connection is named by its ``name`` in upper case with every character that is not a letter or
digit turned into ``_``::

    RELAY_AGENT__AGENT__LOG_FORMAT=json
    RELAY_AGENT__HEALTH__PORT=9090
    RELAY_AGENT__CONNECTIONS__ORDERS__TARGET=http://orders-svc:8080
    RELAY_AGENT__CONNECTIONS__ORDERS__CREDENTIAL__CLIENT_ID=00000000-0000-0000-0000-000000000000

A value is read as a TOML value when it parses as one (``true``, ``30``, ``["/api"]``), otherwise
as a string. Overrides only change keys of connections the file defines.

Secrets never live in the file: a client secret or a connection string with a key is read from
the environment variable the file names (``client_secret_env``, ``connection_string_env``).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..connection_string import parse_connection_string
from ..forward import ForwardTarget, TargetError
from ..paths import PathError, canonical_name

__all__ = ["AgentConfig", "ConfigError", "ConnectionConfig", "CredentialConfig", "load_config", "ENV_PREFIX"]

ENV_PREFIX = "RELAY_AGENT__"

CREDENTIAL_TYPES = ("managed_identity", "workload_identity", "client_secret", "connection_string", "default")

_AGENT_KEYS = {"log_format": str, "log_level": str, "drain_timeout": (int, float)}
_HEALTH_KEYS = {"enabled": bool, "host": str, "port": int}
_TRACING_KEYS = {"exporter": str, "service_name": str}
TRACING_EXPORTERS = ("none", "console", "otlp")
_CONNECTION_KEYS = {
    "name": str, "address": str, "target": str, "allow_paths": list, "websockets": bool, "timeout": (int, float),
    "connect_timeout": (int, float), "max_concurrency": int, "max_websockets": int, "ca_file": str, "credential": dict,
}
_CREDENTIAL_KEYS: dict[str, dict[str, type | tuple]] = {
    "managed_identity": {"client_id": str},
    "workload_identity": {"client_id": str, "tenant_id": str, "token_file": str},
    "client_secret": {"client_id": str, "tenant_id": str, "client_secret_env": str, "authority": str},
    "connection_string": {"connection_string_env": str},
    "default": {"managed_identity_client_id": str},
}
_LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """The configuration cannot be used. ``problems`` lists every bad key with what to do, one per line."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class CredentialConfig:
    """How one connection authenticates; ``settings`` are the type's keys (no secrets, only env var names)."""

    type: str = "default"
    settings: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str | None:
        return dict(self.settings).get(key)


@dataclass(frozen=True)
class ConnectionConfig:
    """One hybrid connection served by the agent: where it listens, where it forwards, how it authenticates."""

    name: str
    address: str
    target: ForwardTarget
    credential: CredentialConfig
    ca_file: str | None = None
    connection_string: str | None = field(default=None, repr=False, compare=True)


@dataclass(frozen=True)
class AgentConfig:
    """The whole validated configuration."""

    connections: tuple[ConnectionConfig, ...]
    log_format: str = "text"
    log_level: str = "info"
    drain_timeout: float = 30.0
    health_enabled: bool = False
    health_host: str = "127.0.0.1"
    health_port: int = 9090
    tracing_exporter: str = "none"
    tracing_service_name: str = "relay-agent"


def env_name(connection_name: str) -> str:
    """The part of an override variable that names a connection: ``orders-eu`` → ``ORDERS_EU``."""
    return re.sub(r"[^A-Za-z0-9]", "_", connection_name).upper()


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_overrides(data: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> None:
    connections = data.get("connections") if isinstance(data.get("connections"), list) else []
    by_env: dict[str, dict] = {}
    for i, conn in enumerate(connections):
        if isinstance(conn, dict):
            name = conn.get("name") or _entity_of(conn.get("address")) or f"#{i + 1}"
            by_env[env_name(str(name))] = conn
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX):].lower().split("__")
        value = _parse_env_value(environ[var])
        if len(parts) == 2 and parts[0] in ("agent", "health", "tracing"):
            data.setdefault(parts[0], {})
            if isinstance(data[parts[0]], dict):
                data[parts[0]][parts[1]] = value
            continue
        if parts[0] == "connections" and len(parts) in (3, 4):
            conn = by_env.get(parts[1].upper())
            if conn is None:
                problems.append(f"{var}: no connection named {parts[1].upper()!r} in the file "
                                f"(known: {', '.join(sorted(by_env)) or 'none'})")
                continue
            if len(parts) == 3:
                conn[parts[2]] = value
            elif parts[2] == "credential":
                cred = conn.setdefault("credential", {})
                if isinstance(cred, dict):
                    cred[parts[3]] = value
            else:
                problems.append(f"{var}: only CREDENTIAL__KEY may be nested under a connection")
            continue
        problems.append(f"{var}: not a known override; use {ENV_PREFIX}AGENT__KEY, {ENV_PREFIX}HEALTH__KEY, "
                        f"{ENV_PREFIX}CONNECTIONS__NAME__KEY or {ENV_PREFIX}CONNECTIONS__NAME__CREDENTIAL__KEY")


def _entity_of(address: Any) -> str | None:
    if not isinstance(address, str) or "://" not in address:
        return None
    return address.split("://", 1)[1].partition("/")[2].strip("/") or None


def _check_types(section: Mapping[str, Any], allowed: Mapping[str, Any], where: str, problems: list[str]) -> None:
    for key, value in section.items():
        if key not in allowed:
            problems.append(f"{where}.{key}: unknown key (known: {', '.join(sorted(allowed))})")
            continue
        want = allowed[key]
        if isinstance(value, bool) and want is not bool and bool not in (want if isinstance(want, tuple) else (want,)):
            problems.append(f"{where}.{key}: expected {_type_name(want)}, got a boolean")
        elif not isinstance(value, want):
            problems.append(f"{where}.{key}: expected {_type_name(want)}, got {type(value).__name__} {value!r}")


def _type_name(want: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a table"}
    if isinstance(want, tuple):
        return "a number" if set(want) == {int, float} else " or ".join(names[w] for w in want)
    return names[want]


def load_config(path: str, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, override from the environment and validate ``path``; raise :class:`ConfigError` listing every problem."""
    environ = os.environ if environ is None else environ
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], source=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], source=path) from None
    problems: list[str] = []
    _apply_overrides(data, environ, problems)
    config = _validate(data, environ, problems)
    if problems:
        raise ConfigError(problems, source=path)
    assert config is not None
    return config


def _validate(data: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> AgentConfig | None:
    _check_types(data, {"agent": dict, "health": dict, "tracing": dict, "connections": list}, "(top level)", problems)
    tracing = data.get("tracing", {}) if isinstance(data.get("tracing"), dict) else {}
    _check_types(tracing, _TRACING_KEYS, "tracing", problems)
    exporter = tracing.get("exporter", "none")
    if exporter not in TRACING_EXPORTERS:
        problems.append(f"tracing.exporter: {exporter!r} is not one of {', '.join(TRACING_EXPORTERS)}")
    elif exporter != "none":
        problem = tracing_unavailable(exporter)
        if problem:
            problems.append(f"tracing.exporter: {problem}")
    agent = data.get("agent", {}) if isinstance(data.get("agent"), dict) else {}
    health = data.get("health", {}) if isinstance(data.get("health"), dict) else {}
    _check_types(agent, _AGENT_KEYS, "agent", problems)
    _check_types(health, _HEALTH_KEYS, "health", problems)
    log_format = agent.get("log_format", "text")
    if log_format not in ("text", "json"):
        problems.append(f"agent.log_format: {log_format!r} is not 'text' or 'json'")
    log_level = str(agent.get("log_level", "info")).lower()
    if log_level not in _LOG_LEVELS:
        problems.append(f"agent.log_level: {log_level!r} is not one of {', '.join(_LOG_LEVELS)}")
    drain = agent.get("drain_timeout", 30.0)
    if not isinstance(drain, (int, float)) or isinstance(drain, bool) or not 0 <= drain <= 3600:
        problems.append("agent.drain_timeout: use 0 to 3600 seconds")
        drain = 30.0
    port = health.get("port", 9090)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        problems.append("health.port: use 0 to 65535 (0 picks a free port)")
        port = 9090

    raw_connections = data.get("connections")
    if not isinstance(raw_connections, list) or not raw_connections:
        problems.append("connections: define at least one [[connections]] table (name, address, target, credential)")
        raw_connections = []
    connections: list[ConnectionConfig] = []
    names: dict[str, str] = {}
    addresses: dict[str, str] = {}
    for i, raw in enumerate(raw_connections):
        where = f"connections[{i + 1}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected a table")
            continue
        if isinstance(raw.get("name"), str):
            where = f"connections[{raw['name']}]"
        raw_name = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else _entity_of(raw.get("address"))
        if raw_name:
            if raw_name.lower() in names:
                problems.append(f"{where}.name: duplicate connection name {raw_name!r} (also {names[raw_name.lower()]})")
                continue
            names[raw_name.lower()] = where
        before = len(problems)
        conn = _connection(raw, where, environ, problems)
        if conn is None or len(problems) > before:
            continue
        key = conn.address.rstrip("/").lower()
        if key in addresses:
            problems.append(f"{where}.address: {conn.address} is already served by {addresses[key]}; "
                            "one agent listens once per hybrid connection")
            continue
        addresses[key] = where
        connections.append(conn)
    if problems:
        return None
    return AgentConfig(tuple(connections), log_format, log_level, float(drain), bool(health.get("enabled", False)),
                       str(health.get("host", "127.0.0.1")), port, exporter, str(tracing.get("service_name", "relay-agent")))


def tracing_unavailable(exporter: str) -> str | None:
    """Why ``exporter`` cannot be used in this installation (a package is missing), or ``None``."""
    import importlib.util

    def missing(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except ModuleNotFoundError:  # a parent package is missing
            return True

    if missing("opentelemetry.sdk"):
        return f"{exporter!r} needs the OpenTelemetry SDK: pip install opentelemetry-sdk"
    if exporter == "otlp" and missing("opentelemetry.exporter.otlp.proto.http"):
        return ("'otlp' needs the OTLP exporter: pip install opentelemetry-exporter-otlp-proto-http "
                "(the version matching opentelemetry-sdk); endpoint from OTEL_EXPORTER_OTLP_ENDPOINT")
    return None


def _connection(raw: dict[str, Any], where: str, environ: Mapping[str, str], problems: list[str]) -> ConnectionConfig | None:
    _check_types(raw, _CONNECTION_KEYS, where, problems)
    cred_raw = raw.get("credential", {"type": "default"})
    if not isinstance(cred_raw, dict):
        cred_raw = {}
    ctype = cred_raw.get("type", "default")
    credential = CredentialConfig()
    connection_string: str | None = None
    address = raw.get("address") if isinstance(raw.get("address"), str) else None
    if ctype not in CREDENTIAL_TYPES:
        problems.append(f"{where}.credential.type: {ctype!r} is not one of {', '.join(CREDENTIAL_TYPES)}")
    else:
        allowed = {"type": str, **_CREDENTIAL_KEYS[ctype]}
        _check_types(cred_raw, allowed, f"{where}.credential", problems)
        settings = tuple(sorted((k, v) for k, v in cred_raw.items() if k != "type" and isinstance(v, str)))
        credential = CredentialConfig(ctype, settings)
        if ctype == "client_secret":
            for key in ("client_id", "tenant_id", "client_secret_env"):
                if not cred_raw.get(key):
                    problems.append(f"{where}.credential.{key}: required for type 'client_secret'")
            var = cred_raw.get("client_secret_env")
            if isinstance(var, str) and var and not environ.get(var):
                problems.append(f"{where}.credential.client_secret_env: environment variable {var} is not set")
        if ctype == "connection_string":
            var = cred_raw.get("connection_string_env")
            if not isinstance(var, str) or not var:
                problems.append(f"{where}.credential.connection_string_env: name the environment variable that holds "
                                "the connection string (the string itself does not belong in the file)")
            elif not environ.get(var):
                problems.append(f"{where}.credential.connection_string_env: environment variable {var} is not set")
            else:
                try:
                    cs = parse_connection_string(environ[var])
                    if cs.entity_path:
                        cs_address = cs.address()
                    else:
                        cs_address = cs.address(_entity_of(address) if address else None)
                except ValueError as exc:
                    problems.append(f"{where}.credential.connection_string_env: {var}: {exc}")
                else:
                    connection_string = environ[var]
                    if address and address.rstrip("/").lower() != cs_address.rstrip("/").lower():
                        problems.append(f"{where}.address: {address} differs from the connection string's {cs_address}; "
                                        "give one of them")
                    address = cs_address
    if not address:
        if "address" not in raw:
            problems.append(f"{where}.address: required (sb://NAMESPACE.servicebus.windows.net/HYBRID-CONNECTION), "
                            "unless the connection string has EntityPath")
        return None
    entity = _entity_of(address)
    if not re.match(r"^(sb|wss?|https?)://[^/]+/", address) or not entity:
        problems.append(f"{where}.address: {address!r} should look like sb://NAMESPACE.servicebus.windows.net/HYBRID-CONNECTION")
        return None
    try:
        canonical_name(entity, what=f"{where}.address: hybrid connection name")
    except PathError as exc:
        problems.append(str(exc))
        return None
    if "target" not in raw:
        problems.append(f"{where}.target: required, e.g. target = \"http://127.0.0.1:8080\"")
        return None
    options: dict[str, Any] = {}
    for key in ("websockets", "timeout", "connect_timeout", "max_concurrency", "max_websockets"):
        if key in raw:
            options[key] = raw[key]
    for key in ("max_concurrency", "max_websockets"):
        if isinstance(options.get(key), int) and options[key] < 0:
            problems.append(f"{where}.{key}: use 0 (unlimited) or more")
    if isinstance(options.get("connect_timeout"), (int, float)) and not 0 < options["connect_timeout"] <= 60:
        problems.append(f"{where}.connect_timeout: use more than 0 and at most 60 seconds")
    allow = raw.get("allow_paths", [])
    if not isinstance(allow, list) or not all(isinstance(p, str) for p in allow):
        problems.append(f"{where}.allow_paths: expected a list of path prefixes such as [\"/api/v1\"]")
        allow = []
    try:
        target = ForwardTarget.build(raw["target"], allow, **options) if isinstance(raw["target"], str) else None
    except TargetError as exc:
        text = str(exc)
        key = "allow_paths" if "allowed path" in text else "timeout" if text.startswith("timeout") else "target"
        problems.append(f"{where}.{key}: {text}")
        return None
    except TypeError as exc:
        problems.append(f"{where}: {exc}")
        return None
    if target is None:
        return None
    name = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else entity
    ca_file = raw.get("ca_file") if isinstance(raw.get("ca_file"), str) else None
    if ca_file and not os.path.isfile(ca_file):
        problems.append(f"{where}.ca_file: {ca_file} does not exist")
    return ConnectionConfig(name, address, target, credential, ca_file, connection_string)
