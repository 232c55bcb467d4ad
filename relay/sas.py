"""Shared Access Signature tokens and token inspection, without I/O.

Used by the client (to build SAS tokens from a key) and by the emulator (to
verify them). The algorithm follows relay-protocol.md §3.1: HMAC-SHA256 with the
UTF-8 bytes of the key over ``urlencode(sr) + "\\n" + se``, where the *encoded*
``sr`` is signed exactly as it appears in the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

SAS_PREFIX = "SharedAccessSignature "
RELAY_AUDIENCE = "https://relay.azure.net"
RELAY_SCOPE = "https://relay.azure.net/.default"


@dataclass(frozen=True, slots=True)
class SasToken:
    """The parts of a SAS token. ``resource_raw`` is ``sr`` still percent-encoded, as signed."""

    resource_raw: str
    signature: str
    expiry: int
    key_name: str

    @property
    def resource(self) -> str:
        return unquote(self.resource_raw)

    def __repr__(self) -> str:  # the signature is the secret part
        return f"SasToken(resource={self.resource!r}, expiry={self.expiry}, key_name={self.key_name!r})"


def sas_resource_uri(address: str) -> str:
    """The audience .NET signs for an address: scheme ``http``, port and query dropped, trailing slash."""
    parts = urlsplit(address if "://" in address else f"sb://{address}")
    path = parts.path
    if path.startswith("/$hc/"):
        path = path[4:]
    if not path.endswith("/"):
        path += "/"
    return f"http://{(parts.hostname or '').lower()}{path}"


def _sign(key: str, encoded_resource: str, expiry: int) -> str:
    digest = hmac.new(key.encode("utf-8"), f"{encoded_resource}\n{expiry}".encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def generate_sas_token(resource_uri: str, key_name: str, key: str, *, ttl: float = 3600, now: float | None = None) -> str:
    """Build ``SharedAccessSignature sr=..&sig=..&se=..&skn=..`` valid for ``ttl`` seconds."""
    expiry = int((time.time() if now is None else now) + ttl)
    encoded = quote(resource_uri, safe="")
    signature = quote(_sign(key, encoded, expiry), safe="")
    return f"{SAS_PREFIX}sr={encoded}&sig={signature}&se={expiry}&skn={quote(key_name, safe='')}"


def is_sas_token(token: str) -> bool:
    return token.startswith(SAS_PREFIX)


def parse_sas_token(token: str) -> SasToken:
    """Split a SAS token into its fields. Raises ``ValueError`` naming what is missing."""
    if not is_sas_token(token):
        raise ValueError("not a SharedAccessSignature token")
    fields: dict[str, str] = {}
    for pair in token[len(SAS_PREFIX):].split("&"):
        key, sep, value = pair.partition("=")
        if sep:
            fields[key.strip()] = value
    missing = [k for k in ("sr", "sig", "se", "skn") if k not in fields]
    if missing:
        raise ValueError(f"SAS token lacks {', '.join(missing)}")
    try:
        expiry = int(fields["se"])
    except ValueError:
        raise ValueError("SAS token 'se' is not an integer") from None
    # Percent-decode only; a decoded space was a '+' that was not encoded.
    signature = unquote(fields["sig"]).replace(" ", "+")
    return SasToken(fields["sr"], signature, expiry, unquote(fields["skn"]))


def verify_sas_signature(token: SasToken, key: str) -> bool:
    """True when ``token`` was signed with ``key`` (constant-time comparison)."""
    expected = _sign(key, token.resource_raw, token.expiry)
    return hmac.compare_digest(expected, token.signature)


def normalized_resource(uri: str) -> tuple[str, str]:
    """``(host, path)`` of an ``sr`` or address: any scheme, lower-case host, no port/query/trailing slash, no ``$hc``."""
    parts = urlsplit(uri if "://" in uri else f"sb://{uri}")
    path = parts.path
    if path.lower().startswith("/$hc/"):
        path = path[4:]
    return (parts.hostname or "").lower(), path.strip("/").lower()


def resource_covers(resource: str, entity_path: str) -> bool:
    """True when the normalized ``sr`` path is a path-segment prefix of ``entity_path`` (case-insensitive)."""
    _, sr_path = normalized_resource(resource)
    target = entity_path.strip("/").lower()
    return not sr_path or target == sr_path or target.startswith(sr_path + "/")


def jwt_claims(token: str) -> dict:
    """Decode a JWT's payload without verifying it (for expiry and diagnostics only)."""
    if token.lower().startswith("bearer "):
        token = token[7:]
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError) as exc:
        raise ValueError("token is neither a SAS token nor a well-formed JWT") from exc
    if not isinstance(claims, dict):
        raise ValueError("JWT payload is not a JSON object")
    return claims


def token_expiry(token: str) -> float | None:
    """Expiry of a SAS or JWT token as a Unix time, or ``None`` if it cannot be read."""
    try:
        if is_sas_token(token):
            return float(parse_sas_token(token).expiry)
        exp = jwt_claims(token).get("exp")
        return float(exp) if exp is not None else None
    except (ValueError, TypeError):
        return None
