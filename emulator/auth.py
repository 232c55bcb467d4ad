"""Token checks the way the Relay service does them: SAS rules and Entra ID (RBAC) JWTs.

:meth:`Authorizer.authorize` takes the raw token (SAS or JWT, optional ``Bearer ``),
the entity and the right needed (``Listen`` or ``Send``), and returns the token's
expiry, or raises :class:`AuthError` carrying the HTTP status (401 for a missing,
malformed, expired, wrongly signed or wrong-audience token; 403 for a valid token
without the right) and the Azure-style message from :mod:`relay.protocol`.

SAS (relay-protocol.md §3.1): HMAC over the raw ``sr`` (:mod:`relay.sas`); the
``sr`` host must be the namespace host the client dialed (port ignored; ``sasAudienceHostCheck``)
and its path a segment prefix of the entity, so .NET (port dropped, trailing slash) and Node
(port kept) forms both pass. A ``Bearer `` prefix is for JWTs only (``allowBearerSas``).
JWT (§3.3, §7): RS256 signed by the emulator's identity key, ``aud``
``https://relay.azure.net`` with or without a trailing slash, ``exp``/``nbf`` with
the configured grace, and the ``oid`` looked up in ``roleAssignments``.
"""

from __future__ import annotations

import functools
import time
from urllib.parse import urlsplit

import jwt

from relay import protocol as p
from relay import sas

from .config import ROLES, EmulatorConfig
from .identity import TokenIssuer

LISTEN = "Listen"
SEND = "Send"

RELAY_AUDIENCES = frozenset({sas.RELAY_AUDIENCE, sas.RELAY_AUDIENCE + "/"})
MSG_NOT_YET_VALID = "InvalidToken: The token is not yet valid."
MSG_INVALID_ISSUER = "InvalidIssuer: The token was not issued by a trusted authority."


class AuthError(Exception):
    """Authentication (401) or authorization (403) failure; ``message`` is the service text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def scope_covers(scope: str, target: str) -> bool:
    """True when an RBAC ``scope`` includes the ARM id ``target`` (case-insensitive, whole path segments).

    A hybrid-connection scope covers only that hybrid connection, even though entity
    names may contain ``/`` (``.../hybridConnections/orders`` does not cover ``orders/eu``).
    """
    s = scope.strip().rstrip("/").lower()
    t = target.lower()
    if not s:
        return True  # "/": every resource
    if "/hybridconnections/" in s:
        return t == s
    return t == s or t.startswith(s + "/")


@functools.lru_cache(maxsize=256)  # one urlsplit per distinct Host header, not per request
def _hostname(host: str) -> str:
    """``Host`` header value -> lower-case host name without the port (``[::1]:80`` -> ``::1``)."""
    return (urlsplit(f"//{host}").hostname or host).lower()


class Authorizer:
    """Checks tokens against the config's SAS rules and role assignments."""

    CACHE_LIMIT = 4096

    def __init__(self, config: EmulatorConfig, issuer: TokenIssuer) -> None:
        self.config = config
        self.issuer = issuer
        # (token, entity, right, host) -> expiry of checks that passed. Senders reuse one token for
        # thousands of requests; the signature check (HMAC or RSA) then runs once, not per
        # request. The config is static, so only expiry can turn a cached grant stale.
        self._granted: dict[tuple[str, str, str], float] = {}

    def authorize(self, token: str | None, entity: str, right: str, *, now: float | None = None,
                  host: str | None = None) -> float | None:
        """Check ``token`` grants ``right`` on ``entity``; return its expiry (Unix time).

        ``host`` is the namespace host the client dialed (``Host``, port ignored): with
        ``sasAudienceHostCheck`` a SAS token whose ``sr`` names another host is refused (401
        ``InvalidAudience``), as Azure refuses a token for another namespace.
        """
        if not token:
            raise AuthError(401, p.MSG_MISSING_TOKEN)
        now = time.time() if now is None else now
        hostname = _hostname(host) if host and self.config.sas_audience_host_check else None
        key = (token, entity.lower(), right, hostname)
        expiry = self._granted.get(key)
        if expiry is not None:
            if expiry + self.config.token_grace_seconds >= now:
                return expiry
            del self._granted[key]
        expiry = self._check(token.strip(), entity, right, now, hostname)
        if len(self._granted) >= self.CACHE_LIMIT:
            self._granted.clear()
        self._granted[key] = expiry
        return expiry

    def _check(self, token: str, entity: str, right: str, now: float, hostname: str | None) -> float:
        if sas.is_sas_token(token):
            return self._sas(token, entity, right, now, hostname)
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
            if sas.is_sas_token(token):
                if not self.config.allow_bearer_sas:
                    # The service reads "Bearer " as an OAuth token: a SAS behind it is not one.
                    raise AuthError(401, p.MSG_MALFORMED_TOKEN)
                return self._sas(token, entity, right, now, hostname)
        return self._jwt(token, entity, right, now)

    # -- SAS --------------------------------------------------------------------------------

    def _sas(self, token: str, entity: str, right: str, now: float, hostname: str | None = None) -> float:
        try:
            parsed = sas.parse_sas_token(token)
        except ValueError:
            raise AuthError(401, p.MSG_MALFORMED_TOKEN) from None
        entity_l = entity.lower()
        candidates = [
            r for r in self.config.sas_rules
            if r.name == parsed.key_name and (r.entity is None or r.entity.lower() == entity_l)
        ]
        rule = next((r for r in candidates if sas.verify_sas_signature(parsed, r.key)), None)
        if rule is None:
            raise AuthError(401, p.MSG_INVALID_SIGNATURE)
        if parsed.expiry + self.config.token_grace_seconds < now:
            raise AuthError(401, p.MSG_EXPIRED_TOKEN)
        if not sas.resource_covers(parsed.resource, entity):
            raise AuthError(401, p.MSG_INVALID_AUDIENCE)
        if hostname is not None and (urlsplit(parsed.resource).hostname or "") != hostname:
            raise AuthError(401, p.MSG_INVALID_AUDIENCE)
        if not rule.grants(right):
            raise AuthError(403, p.forbidden_message(right))
        return float(parsed.expiry)

    # -- JWT --------------------------------------------------------------------------------

    def _jwt(self, token: str, entity: str, right: str, now: float) -> float:
        if token.count(".") != 2:
            raise AuthError(401, p.MSG_MALFORMED_TOKEN)
        try:
            claims = self.issuer.decode(token, leeway=self.config.token_grace_seconds)
        except jwt.ExpiredSignatureError:
            raise AuthError(401, p.MSG_EXPIRED_TOKEN) from None
        except jwt.ImmatureSignatureError:
            raise AuthError(401, MSG_NOT_YET_VALID) from None
        except jwt.InvalidIssuerError:
            raise AuthError(401, MSG_INVALID_ISSUER) from None
        except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
            raise AuthError(401, p.MSG_INVALID_SIGNATURE) from None
        except jwt.InvalidTokenError:
            raise AuthError(401, p.MSG_MALFORMED_TOKEN) from None
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a in RELAY_AUDIENCES for a in auds):
            raise AuthError(401, p.MSG_INVALID_AUDIENCE)
        oid = str(claims.get("oid") or "").lower()
        if not self.principal_has(oid, entity, right):
            raise AuthError(403, p.forbidden_message(right))
        return float(claims["exp"])

    def principal_has(self, principal_id: str, entity: str, right: str) -> bool:
        """True when a role assignment of ``principal_id`` grants ``right`` on ``entity``."""
        target = self.config.entity_scope(entity)
        for assignment in self.config.role_assignments:
            if assignment.principal_id.lower() != principal_id:
                continue
            rights = ROLES[assignment.role][1]
            if right in rights and scope_covers(assignment.scope, target):
                return True
        return False
