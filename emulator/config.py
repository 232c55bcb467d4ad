"""Emulator configuration: load, validate, fill defaults.

The config is a JSON object (see emulator/README.md). :func:`load_config` turns
it into an :class:`EmulatorConfig`; every problem raises :class:`ConfigError`
whose message names the offending key (``hybridConnections[1].name``), so a bad
file fails at start-up with a clear line instead of a stack trace later.

With no file, :func:`default_config` gives a namespace with a few hybrid
connections, one namespace SAS rule with a random key and one system-assigned
identity that owns the namespace. Secrets are never hard-coded.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

# Built-in Azure Relay roles (relay-protocol.md §7): definition GUID -> (name, rights).
ROLE_OWNER = "2787bf04-f1f5-4bfe-8383-c8a24483ee38"
ROLE_LISTENER = "26e0b698-aa6d-4085-9386-aadae190014d"
ROLE_SENDER = "26baccc8-eea7-41f1-98f4-1762cc7f685d"
ROLES: dict[str, tuple[str, frozenset[str]]] = {
    ROLE_OWNER: ("Azure Relay Owner", frozenset({"Listen", "Send", "Manage"})),
    ROLE_LISTENER: ("Azure Relay Listener", frozenset({"Listen"})),
    ROLE_SENDER: ("Azure Relay Sender", frozenset({"Send"})),
}
_ROLE_BY_NAME = {name.lower(): guid for guid, (name, _) in ROLES.items()}

RIGHTS = ("Listen", "Send", "Manage")
_ENTITY_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,258}[A-Za-z0-9])?$")
_NAMESPACE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,48}[A-Za-z0-9]$")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key at fault."""


def role_guid(role: str) -> str | None:
    """Resolve a role display name, bare GUID or full role-definition id to the role GUID (None if unknown)."""
    value = role.strip().rstrip("/")
    tail = value.rsplit("/", 1)[-1].lower()
    if tail in ROLES:
        return tail
    return _ROLE_BY_NAME.get(value.lower())


@dataclass(slots=True)
class HybridConnection:
    name: str
    requires_client_authorization: bool = True
    user_metadata: str = ""


@dataclass(slots=True)
class SasRule:
    name: str
    key: str
    rights: frozenset[str]
    entity: str | None = None  # None: namespace-level rule

    def grants(self, right: str) -> bool:
        return right in self.rights or "Manage" in self.rights


@dataclass(slots=True)
class Identity:
    name: str
    client_id: str
    principal_id: str
    system_assigned: bool = False
    resource_id: str = ""


@dataclass(slots=True)
class RoleAssignment:
    principal_id: str
    role: str  # GUID
    scope: str


@dataclass(slots=True)
class EmulatorConfig:
    """Validated configuration. ``raw`` is the effective JSON (defaults and generated values filled in)."""

    namespace: str
    tenant_id: str
    subscription_id: str
    resource_group: str
    hybrid_connections: dict[str, HybridConnection]
    sas_rules: list[SasRule]
    identities: list[Identity]
    role_assignments: list[RoleAssignment]
    token_lifetime_seconds: int = 3600
    listener_limit: int = 25
    accept_timeout_seconds: float = 30.0
    response_timeout_seconds: float = 60.0
    inline_threshold_bytes: int = 65536
    token_grace_seconds: float = 0.0
    no_listener_http_status: int = 502
    idle_timeout_seconds: float | None = 240.0
    listener_recycle_seconds: float | None = None
    max_message_bytes: int = 64 * 1024 * 1024
    identity_header: str | None = None
    # The strict profile (emulator/README.md "Strict profile"): each key's default is the strict value.
    rendezvous_host: str | None = "127.0.0.2"
    rendezvous_exact_url: bool = True
    control_ping_policy: str = "close"
    rendezvous_per_sender_connection: bool = True
    rendezvous_request_address: bool = False
    service_close_codes: bool = True
    strict_response_routing: bool = True
    control_response_limit_bytes: int | None = 65536
    sas_audience_host_check: bool = True
    allow_bearer_sas: bool = False
    azure_request_headers: bool = True
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def namespace_scope(self) -> str:
        """ARM id of the namespace, used for RBAC scope checks."""
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Relay/namespaces/{self.namespace}"
        )

    def entity_scope(self, entity: str) -> str:
        return f"{self.namespace_scope}/hybridConnections/{entity}"


def default_config() -> dict[str, Any]:
    """A useful local-dev config: random ids and a random namespace key (never a secret in code)."""
    tenant, sub = str(uuid.uuid4()), str(uuid.uuid4())
    principal = str(uuid.uuid4())
    ns = "contoso"
    rg = "relay-local"
    return {
        "namespace": ns,
        "tenantId": tenant,
        "subscriptionId": sub,
        "resourceGroup": rg,
        "hybridConnections": [
            {"name": "orders", "requiresClientAuthorization": True},
            {"name": "inbound", "requiresClientAuthorization": True},
            {"name": "echo", "requiresClientAuthorization": True},
            {"name": "public", "requiresClientAuthorization": False},
        ],
        "sasRules": [
            {"name": "RootManageSharedAccessKey", "key": generate_key(), "rights": ["Manage", "Listen", "Send"], "entity": None},
        ],
        "identities": [
            {"name": "bridge", "clientId": str(uuid.uuid4()), "principalId": principal, "systemAssigned": True},
        ],
        "roleAssignments": [
            {
                "principalId": principal,
                "role": "Azure Relay Owner",
                "scope": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Relay/namespaces/{ns}",
            }
        ],
        "tokenLifetimeSeconds": 3600,
    }


def generate_key() -> str:
    """A random SAS key in the portal's shape (44 base64 characters)."""
    import base64

    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


# --- validation helpers -----------------------------------------------------------------------


def _get(obj: dict, key: str, where: str, kind: type | tuple[type, ...], default: Any = ..., *, nullable: bool = False) -> Any:
    path = f"{where}.{key}" if where else key
    if key not in obj:
        if default is ...:
            raise ConfigError(f"missing required key '{path}'")
        return default
    value = obj[key]
    if value is None and nullable:
        return None
    # bool is an int in Python; refuse it where a number is expected.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(f"'{path}' must be {_kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(f"'{path}' must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _positive(value: float, path: str) -> float:
    if value <= 0:
        raise ConfigError(f"'{path}' must be greater than 0, got {value}")
    return value


_PLACEHOLDER = re.compile(r"^\s*<[^<>]*>\s*$")


def _refuse_placeholders(value: Any, path: str) -> None:
    """Refuse documentation placeholders such as ``"<random>"`` or ``"<guid>"`` anywhere in the config.

    A sample copied verbatim would otherwise load, and managed identity would then fail much
    later with a 403 that names nothing in the file.
    """
    if isinstance(value, str):
        if _PLACEHOLDER.match(value):
            raise ConfigError(
                f"'{path}' is the placeholder {value!r}: replace it with a real value "
                "(keys: 44 random base64 characters, e.g. python -c \"import base64,os; print(base64.b64encode(os.urandom(32)).decode())\"; "
                "ids: a GUID, e.g. python -c \"import uuid; print(uuid.uuid4())\"), or start without --config "
                "to get a generated namespace"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_placeholders(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_placeholders(item, f"{path}[{i}]")


def _guid(value: str, path: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ConfigError(f"'{path}' {value!r} is not a GUID (Azure ids look like 8-4-4-4-12 hex digits)") from None
    return value


_KNOWN_KEYS = {
    "namespace", "tenantId", "subscriptionId", "resourceGroup", "hybridConnections", "sasRules", "identities",
    "roleAssignments", "tokenLifetimeSeconds", "listenerLimit", "acceptTimeoutSeconds", "responseTimeoutSeconds",
    "inlineThresholdBytes", "tokenGraceSeconds", "noListenerHttpStatus", "idleTimeoutSeconds", "maxMessageBytes",
    "identityHeader", "listenerRecycleSeconds",
    "rendezvousHost", "rendezvousExactUrl", "controlPingPolicy", "rendezvousPerSenderConnection",
    "rendezvousRequestAddress", "serviceCloseCodes", "strictResponseRouting", "controlResponseLimitBytes",
    "sasAudienceHostCheck", "allowBearerSas", "azureRequestHeaders",
}

STRICT_DEFAULTS: dict[str, Any] = {
    "tokenGraceSeconds": 0,
    "idleTimeoutSeconds": 240,
    "rendezvousHost": "127.0.0.2",
    "rendezvousExactUrl": True,
    "controlPingPolicy": "close",
    "rendezvousPerSenderConnection": True,
    "rendezvousRequestAddress": False,
    "serviceCloseCodes": True,
    "strictResponseRouting": True,
    "controlResponseLimitBytes": 65536,
    "sasAudienceHostCheck": True,
    "allowBearerSas": False,
    "azureRequestHeaders": True,
}
"""The strict profile (the defaults)."""

LENIENT_PROFILE: dict[str, Any] = {
    "tokenGraceSeconds": 60,
    "idleTimeoutSeconds": None,
    "rendezvousHost": None,
    "rendezvousExactUrl": False,
    "controlPingPolicy": "answer",
    "rendezvousPerSenderConnection": False,
    "rendezvousRequestAddress": True,
    "serviceCloseCodes": False,
    "strictResponseRouting": False,
    "controlResponseLimitBytes": None,
    "sasAudienceHostCheck": False,
    "allowBearerSas": True,
    "azureRequestHeaders": False,
}
"""The lenient value of every strict-profile key (the emulator before issue 9); merge into a config to relax it."""


def load_config(data: Any) -> EmulatorConfig:
    """Validate a config object (parsed JSON). Raises :class:`ConfigError` naming the bad key."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a JSON object")
    unknown = sorted(set(data) - _KNOWN_KEYS - {k for k in data if k.startswith("_") or k.startswith("$")})
    if unknown:
        raise ConfigError(f"unknown config key '{unknown[0]}' (known keys: {', '.join(sorted(_KNOWN_KEYS))})")
    _refuse_placeholders(data, "")

    namespace = _get(data, "namespace", "", str)
    if not _NAMESPACE_NAME.match(namespace):
        raise ConfigError(f"'namespace' {namespace!r} is not a valid namespace name (letters, digits, '-'; 2-50 chars)")
    tenant = _guid(_get(data, "tenantId", "", str, str(uuid.UUID(int=0))), "tenantId")
    sub = _guid(_get(data, "subscriptionId", "", str, str(uuid.UUID(int=0))), "subscriptionId")
    rg = _get(data, "resourceGroup", "", str, "relay-local")

    hcs: dict[str, HybridConnection] = {}
    for i, item in enumerate(_get(data, "hybridConnections", "", list)):
        where = f"hybridConnections[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"'{where}' must be an object")
        name = _get(item, "name", where, str)
        if not _ENTITY_NAME.match(name) or "//" in name:
            raise ConfigError(f"'{where}.name' {name!r} is not a valid hybrid connection name")
        if name.lower() in {n.lower() for n in hcs}:
            raise ConfigError(f"'{where}.name' {name!r} is defined twice")
        hcs[name] = HybridConnection(
            name,
            _get(item, "requiresClientAuthorization", where, bool, True),
            _get(item, "userMetadata", where, str, ""),
        )

    rules: list[SasRule] = []
    for i, item in enumerate(_get(data, "sasRules", "", list, [])):
        where = f"sasRules[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"'{where}' must be an object")
        name = _get(item, "name", where, str)
        key = _get(item, "key", where, str)
        if not key or len(key) > 256:
            raise ConfigError(f"'{where}.key' must be 1-256 characters")
        rights = _get(item, "rights", where, list)
        for right in rights:
            if right not in RIGHTS:
                raise ConfigError(f"'{where}.rights' has {right!r}; allowed: {', '.join(RIGHTS)}")
        if not rights:
            raise ConfigError(f"'{where}.rights' must not be empty")
        entity = _get(item, "entity", where, str, None, nullable=True)
        if entity is not None and entity not in hcs:
            raise ConfigError(f"'{where}.entity' {entity!r} is not one of hybridConnections")
        if any(r.name == name and r.entity == entity for r in rules):
            raise ConfigError(f"'{where}.name' {name!r} is defined twice for the same scope")
        rules.append(SasRule(name, key, frozenset(rights), entity))

    identities: list[Identity] = []
    for i, item in enumerate(_get(data, "identities", "", list, [])):
        where = f"identities[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"'{where}' must be an object")
        ident = Identity(
            _get(item, "name", where, str),
            _get(item, "clientId", where, str),
            _get(item, "principalId", where, str),
            _get(item, "systemAssigned", where, bool, False),
            _get(item, "resourceId", where, str, ""),
        )
        _guid(ident.client_id, f"{where}.clientId")
        _guid(ident.principal_id, f"{where}.principalId")
        for key, attr in (("clientId", "client_id"), ("principalId", "principal_id"), ("name", "name")):
            for j, other in enumerate(identities):
                if getattr(other, attr).lower() == getattr(ident, attr).lower():
                    raise ConfigError(
                        f"'{where}.{key}' {getattr(ident, attr)!r} is already used by identities[{j}] "
                        f"({other.name!r}); every identity needs its own {key}"
                    )
        if not ident.resource_id:
            ident.resource_id = (
                f"/subscriptions/{sub}/resourceGroups/{rg}/providers/"
                f"Microsoft.ManagedIdentity/userAssignedIdentities/{ident.name}"
            )
        identities.append(ident)
    if sum(1 for x in identities if x.system_assigned) > 1:
        raise ConfigError("'identities': at most one identity may have systemAssigned true")

    assignments: list[RoleAssignment] = []
    for i, item in enumerate(_get(data, "roleAssignments", "", list, [])):
        where = f"roleAssignments[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"'{where}' must be an object")
        role = _get(item, "role", where, str)
        guid = role_guid(role)
        if guid is None:
            raise ConfigError(
                f"'{where}.role' {role!r} is not an Azure Relay role "
                "(Azure Relay Owner/Listener/Sender or their role-definition GUIDs)"
            )
        scope = _get(item, "scope", where, str)
        if not scope.startswith("/"):
            raise ConfigError(f"'{where}.scope' must be an ARM id starting with '/'")
        principal = _get(item, "principalId", where, str)
        if not any(ident.principal_id.lower() == principal.lower() for ident in identities):
            known = ", ".join(f"{ident.name}: {ident.principal_id}" for ident in identities) or "none configured"
            raise ConfigError(
                f"'{where}.principalId' {principal!r} matches no identity, so this role would reach nobody: "
                f"use the principalId of one of 'identities' ({known})"
            )
        assignments.append(RoleAssignment(principal, guid, scope))

    cfg = EmulatorConfig(
        namespace=namespace,
        tenant_id=tenant,
        subscription_id=sub,
        resource_group=rg,
        hybrid_connections=hcs,
        sas_rules=rules,
        identities=identities,
        role_assignments=assignments,
        token_lifetime_seconds=int(_positive(_get(data, "tokenLifetimeSeconds", "", int, 3600), "tokenLifetimeSeconds")),
        listener_limit=int(_positive(_get(data, "listenerLimit", "", int, 25), "listenerLimit")),
        accept_timeout_seconds=float(_positive(_get(data, "acceptTimeoutSeconds", "", (int, float), 30), "acceptTimeoutSeconds")),
        response_timeout_seconds=float(
            _positive(_get(data, "responseTimeoutSeconds", "", (int, float), 60), "responseTimeoutSeconds")
        ),
        inline_threshold_bytes=int(_get(data, "inlineThresholdBytes", "", int, 65536)),
        token_grace_seconds=float(_get(data, "tokenGraceSeconds", "", (int, float), 0)),
        no_listener_http_status=int(_get(data, "noListenerHttpStatus", "", int, 502)),
        idle_timeout_seconds=_get(data, "idleTimeoutSeconds", "", (int, float), 240, nullable=True),
        listener_recycle_seconds=_get(data, "listenerRecycleSeconds", "", (int, float), None, nullable=True),
        max_message_bytes=int(_positive(_get(data, "maxMessageBytes", "", int, 64 * 1024 * 1024), "maxMessageBytes")),
        identity_header=_get(data, "identityHeader", "", str, None, nullable=True),
        rendezvous_host=_get(data, "rendezvousHost", "", str, "127.0.0.2", nullable=True),
        rendezvous_exact_url=_get(data, "rendezvousExactUrl", "", bool, True),
        control_ping_policy=_get(data, "controlPingPolicy", "", str, "close"),
        rendezvous_per_sender_connection=_get(data, "rendezvousPerSenderConnection", "", bool, True),
        rendezvous_request_address=_get(data, "rendezvousRequestAddress", "", bool, False),
        service_close_codes=_get(data, "serviceCloseCodes", "", bool, True),
        strict_response_routing=_get(data, "strictResponseRouting", "", bool, True),
        control_response_limit_bytes=_get(data, "controlResponseLimitBytes", "", int, 65536, nullable=True),
        sas_audience_host_check=_get(data, "sasAudienceHostCheck", "", bool, True),
        allow_bearer_sas=_get(data, "allowBearerSas", "", bool, False),
        azure_request_headers=_get(data, "azureRequestHeaders", "", bool, True),
        raw=dict(data),
    )
    if cfg.token_grace_seconds < 0:
        raise ConfigError("'tokenGraceSeconds' must be 0 or more")
    if cfg.inline_threshold_bytes < 0:
        raise ConfigError("'inlineThresholdBytes' must be 0 or more")
    if not 400 <= cfg.no_listener_http_status <= 599:
        raise ConfigError("'noListenerHttpStatus' must be an HTTP error status (400-599)")
    if cfg.idle_timeout_seconds is not None:
        _positive(cfg.idle_timeout_seconds, "idleTimeoutSeconds")
    if cfg.listener_recycle_seconds is not None:
        _positive(cfg.listener_recycle_seconds, "listenerRecycleSeconds")
    if cfg.control_ping_policy not in ("answer", "close"):
        raise ConfigError(f"'controlPingPolicy' must be \"answer\" or \"close\", got {cfg.control_ping_policy!r}")
    if cfg.control_response_limit_bytes is not None:
        _positive(cfg.control_response_limit_bytes, "controlResponseLimitBytes")
    if cfg.rendezvous_host is not None:
        try:
            ipaddress.ip_address(cfg.rendezvous_host)
        except ValueError:
            raise ConfigError(f"'rendezvousHost' must be an IP address to bind (e.g. 127.0.0.2), got {cfg.rendezvous_host!r}") from None
    return cfg
