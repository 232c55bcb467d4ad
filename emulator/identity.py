"""The managed-identity token endpoint (App Service / Functions shape, api-version 2019-08-01).

``GET /msi/token?api-version=2019-08-01&resource=R[&client_id=|&principal_id=|&object_id=|&mi_res_id=]``
with header ``X-IDENTITY-HEADER`` returns::

    {"access_token": "<RS256 JWT>", "expires_on": "<epoch seconds as a string>",
     "resource": R, "token_type": "Bearer", "client_id": "<clientId>"}

This is what ``azure-identity``'s ``ManagedIdentityCredential`` (sync via MSAL, and aio)
expects when ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` are set. The JWT is signed with
the emulator's own RSA key; :class:`TokenIssuer` also verifies such tokens for the
relay (see :mod:`emulator.auth`). ``GET /stats`` returns ``{"tokens_issued": N}``;
``GET /keys`` the JWKS. Tokens are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from .config import EmulatorConfig, Identity

log = logging.getLogger("emulator.identity")

API_VERSIONS = {"2019-08-01"}


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class TokenIssuer:
    """Mints and verifies the emulator's Entra-style JWTs (RS256, one key)."""

    def __init__(self, config: EmulatorConfig, key: rsa.RSAPrivateKey) -> None:
        self.config = config
        self._key = key
        self.public_key = key.public_key()
        numbers = self.public_key.public_numbers()
        self.kid = hashlib.sha256(_b64url_uint(numbers.n).encode()).hexdigest()[:32]
        self.jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                    "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
        self.issuer = f"https://sts.windows.net/{config.tenant_id}/"
        self.tokens_issued = 0

    def mint(self, identity: Identity, resource: str, *, lifetime: int | None = None, now: float | None = None) -> tuple[str, int]:
        """Return ``(jwt, expires_on)`` for ``identity`` with ``aud = resource``."""
        issued = int(time.time() if now is None else now)
        expires = issued + int(lifetime if lifetime is not None else self.config.token_lifetime_seconds)
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": self.issuer,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
            "tid": self.config.tenant_id,
            "oid": identity.principal_id,
            "sub": identity.principal_id,
            "appid": identity.client_id,
            "azp": identity.client_id,
            "appidacr": "2",
            "idtyp": "app",
            "xms_mirid": identity.resource_id,
            "uti": uuid.uuid4().hex[:22],
            "ver": "1.0",
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "typ": "JWT"})
        self.tokens_issued += 1
        return token, expires

    def decode(self, token: str, *, leeway: float) -> dict:
        """Verify signature, issuer and times (with ``leeway``); audience is checked by the caller.

        Raises ``jwt.InvalidTokenError`` subclasses (``ExpiredSignatureError``, ``InvalidSignatureError``...).
        """
        return jwt.decode(
            token,
            self.public_key,
            algorithms=["RS256"],
            leeway=leeway,
            options={"verify_aud": False, "require": ["exp"]},
            issuer=self.issuer,
        )


def _error(status: int, code: str, message: str) -> web.Response:
    # Same shape as App Service's errors: {"statusCode": .., "message": ..}; MSAL reads both.
    return web.json_response({"statusCode": status, "error": code, "message": message}, status=status)


class IdentityEndpoint:
    """aiohttp application for the identity port."""

    def __init__(self, config: EmulatorConfig, issuer: TokenIssuer, header_secret: str) -> None:
        self.config = config
        self.issuer = issuer
        self._secret = header_secret

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/keys", self.keys)
        app.router.add_get("/{path:.*}", self.token)  # /msi/token, /MSI/token...
        return app

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"tokens_issued": self.issuer.tokens_issued})

    async def keys(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.issuer.jwk]})

    def _find_identity(self, query) -> Identity | str:
        selectors = [(k, query[k]) for k in ("client_id", "principal_id", "object_id", "mi_res_id") if query.get(k)]
        if len(selectors) > 1:
            return "Specify at most one of client_id, principal_id/object_id and mi_res_id."
        if not selectors:
            for ident in self.config.identities:
                if ident.system_assigned:
                    return ident
            return "No system-assigned identity is configured; pass client_id, principal_id or mi_res_id."
        key, value = selectors[0]
        value_l = value.lower()
        for ident in self.config.identities:
            candidate = {
                "client_id": ident.client_id,
                "principal_id": ident.principal_id,
                "object_id": ident.principal_id,
                "mi_res_id": ident.resource_id,
            }[key]
            if candidate.lower() == value_l:
                return ident
        return f"No managed identity with {key} '{value}' is assigned to this app (check the emulator config 'identities')."

    async def token(self, request: web.Request) -> web.Response:
        if request.path.lower().rstrip("/") != "/msi/token":
            return _error(404, "not_found", "Unknown path; use /msi/token, /stats or /keys.")
        header = request.headers.get("X-IDENTITY-HEADER")
        if header is None:
            return _error(400, "invalid_request", "The X-IDENTITY-HEADER header is required.")
        if header != self._secret:
            return _error(401, "unauthorized", "The X-IDENTITY-HEADER value does not match IDENTITY_HEADER.")
        query = request.rel_url.query
        version = query.get("api-version")
        if version not in API_VERSIONS:
            return _error(400, "invalid_request", f"api-version must be one of {sorted(API_VERSIONS)}, got {version!r}.")
        resource = query.get("resource")
        if not resource:
            return _error(400, "invalid_request", "The 'resource' query parameter is required.")
        found = self._find_identity(query)
        if isinstance(found, str):
            return _error(400, "invalid_identity", found)
        token, expires = self.issuer.mint(found, resource)
        log.info("issued a token for identity %s, resource %s", found.name, resource)
        body = {
            "access_token": token,
            "expires_on": str(expires),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": found.client_id,
        }
        return web.Response(text=json.dumps(body), content_type="application/json")
