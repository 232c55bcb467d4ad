"""Plain-words causes for refused tokens, appended to the service's own error text."""

from __future__ import annotations

from .credentials import TokenProvider
from .errors import AuthorizationFailedError, EndpointNotFoundError, ForbiddenError, RelayError


def add_hint(error: RelayError, provider: TokenProvider, *, action: str, sb_uri: str) -> RelayError:
    """Append the likely cause and next step to ``error`` (``action`` is ``"send"`` or ``"listen"``)."""
    role = "Sender" if action == "send" else "Listener"
    right = "Send" if action == "send" else "Listen"
    hint = ""
    text = error.message.lower()
    if isinstance(error, AuthorizationFailedError):
        if "invalidaudience" in text or "wrong audience" in text:
            hint = (
                f"the token was issued for another audience than {sb_uri} (SAS 'sr' or Entra 'aud' must cover it; "
                "Entra tokens must be for https://relay.azure.net)"
            )
        elif "expired" in text:
            hint = "the token has expired (check the clock, or the SharedAccessSignature's 'se')"
        elif provider.kind == "sas-key":
            hint = (
                f"the SAS key name or key is wrong ({provider.describe()} must be a rule on the namespace or on {sb_uri}, "
                "and the key must match it)"
            )
        elif provider.kind == "sas":
            hint = "the SharedAccessSignature is invalid, expired, or was signed for another hybrid connection"
        elif provider.kind == "entra":
            hint = (
                f"the service refused the Entra ID token from {provider.describe()}: it must be issued for "
                "https://relay.azure.net by the namespace's tenant and not be expired"
            )
        else:
            hint = f"no credential was given and {sb_uri} requires client authorization: pass a credential"
    elif isinstance(error, ForbiddenError):
        if provider.kind == "entra":
            hint = (
                f"the identity lacks the Azure Relay {role} role on {sb_uri}; "
                "role assignments take up to five minutes to propagate"
            )
        elif provider.kind in ("sas-key", "sas"):
            hint = f"the SAS rule lacks the '{right}' right on {sb_uri} ({provider.describe()})"
    elif isinstance(error, EndpointNotFoundError):
        hint = f"check the hybrid connection name and the namespace in {sb_uri}"
    if hint:
        error.message = f"{error.message} (likely cause: {hint})"
        error.args = (error.message,)
    return error
