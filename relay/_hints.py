"""Plain words for failures: the likely cause appended to a refused token's service error
(:func:`add_hint`, used by the client and listener), and the CLI's next-step lines
(:func:`cli_hint`, :func:`summarize_credential_failure`, :func:`missing_identity_message`)."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from .credentials import TokenProvider
from .errors import (
    AuthorizationFailedError,
    ConnectionLostError,
    EndpointNotFoundError,
    ForbiddenError,
    NoListenerError,
    RejectedError,
    RelayError,
    RelayTimeoutError,
)


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


# -- what the CLI prints after "error: ..." ------------------------------------------------------

DISTRIBUTION = "hybridconnections"
"""The library's name on PyPI (pyproject.toml); messages tell users what to ``pip install``."""

IDENTITY_INSTALL = f"pip install '{DISTRIBUTION}[identity]'"


def missing_identity_message(what: str) -> str:
    """``what`` (e.g. "Authentication=Managed Identity") needs azure-identity, which is not installed."""
    return (
        f"{what} needs the azure-identity package, which is not installed: {IDENTITY_INSTALL} "
        "(or use SAS instead: SharedAccessKeyName/SharedAccessKey in the connection string, or --sas-key-name)"
    )


def cli_hint(error: RelayError, *, kind: str | None, action: str, address: str = "") -> str:
    """The next step for a failed CLI command, chosen by error type, credential kind and message.

    ``kind`` is the credential's :attr:`TokenProvider.kind` (``"sas-key"``, ``"sas"``, ``"entra"``,
    ``"none"``) when known; ``action`` is ``"send"`` or ``"listen"``.
    """
    role = "Sender" if action == "send" else "Listener"
    right = "Send" if action == "send" else "Listen"
    text = error.message.lower()
    parts = urlsplit(address) if address else None
    host = parts.netloc if parts else "the namespace"
    entity = parts.path.strip("/") if parts else "HYBRID-CONNECTION"
    if isinstance(error, AuthorizationFailedError):
        if kind == "sas-key":
            return ("check the SAS key name and key (env RELAY_SAS_KEY or SharedAccessKey) against the rule on the "
                    "namespace or the hybrid connection")
        if kind == "sas":
            return "sign a new SharedAccessSignature for this hybrid connection (the one given is invalid or expired)"
        if kind == "entra":
            return ("the Entra ID token was refused: it must come from the namespace's tenant for https://relay.azure.net "
                    "(python -m relay token ADDRESS shows which credential answered)")
        return ("this hybrid connection requires client authorization: pass --connection-string, or --sas-key-name "
                "with env RELAY_SAS_KEY, or use an Entra ID identity")
    if isinstance(error, ForbiddenError):
        if kind in ("sas-key", "sas"):
            return (f"the SAS rule has no '{right}' right on {entity}: use a rule with {right} (or Manage) on the "
                    f"namespace or on this hybrid connection, e.g. RootManageSharedAccessKey; Azure RBAC roles do not "
                    f"apply to SAS")
        return (f"grant the identity the Azure Relay {role} role (or Owner) on the hybrid connection, its namespace or "
                f"resource group; role assignments take up to five minutes to propagate")
    if isinstance(error, EndpointNotFoundError):
        return "check the namespace and hybrid connection name in the address"
    if isinstance(error, NoListenerError):
        return "start a listener first: python -m relay listen ADDRESS --forward http://127.0.0.1:8080"
    if isinstance(error, RejectedError):
        if "local service" in text:
            return ("the listener is up but its local service is not: if it is `relay listen --forward` or "
                    "`relay agent`, start the local service (or fix the target URL); see the listener's output")
        return "the listener refused the connection; see the listener's logs"
    if isinstance(error, RelayTimeoutError):
        return "the listener is slow or gone; try again, or raise --timeout"
    if isinstance(error, ConnectionLostError):
        if "wrong_version_number" in text or "wrong version number" in text or "record layer failure" in text:
            return (f"TLS mismatch: {host} does not speak TLS, but sb:// (and a connection string's sb:// Endpoint) "
                    f"means TLS. An emulator started with --no-tls takes ws://{host}/{entity} "
                    f"(Endpoint=ws://{host}/ in a connection string); otherwise check the port")
        if "certificate verify failed" in text or "certificate_verify_failed" in text:
            return ("the server's TLS certificate is not trusted: for the local emulator pass --ca-file with its ca.pem "
                    "(or TrustedCaFile=/abs/path/ca.pem;UseDevelopmentEmulator=true in the connection string)")
        plain = parts is not None and parts.scheme.lower() in ("ws", "http")
        if plain and ("server disconnected" in text or "connection reset" in text):
            return (f"TLS mismatch: {address} is plain text (ws://), but {host} closed the connection at once, as a "
                    f"TLS server does: use sb://{host}/{entity} (an emulator started without --no-tls, or Azure)")
        closed = re.search(r"relayed connection was closed with (\d+)", text)
        if closed or "relayed connection" in text:
            code = closed.group(1) if closed else "no close frame"
            return (f"the listener's end closed the WebSocket ({code}), not the namespace: if it is "
                    "`relay listen --forward`, its local service is down or refused the WebSocket; see the "
                    "listener's output and start the local service")
        if "connect call failed" in text or "connection refused" in text:
            return (f"nothing accepts connections at {host}: is the namespace (or the local emulator) running, and is "
                    "the port right?")
        return "check the network path to the namespace (and --ca-file for the local emulator)"
    return ""


def summarize_credential_failure(exc: BaseException, *, verbose: bool) -> list[str]:
    """Lines describing an azure-identity failure: every credential tried, in full with ``verbose``.

    azure-identity's chained credentials (``DefaultAzureCredential``, ``ChainedTokenCredential``)
    put one ``\\tName: reason`` line per credential after the first line; without ``verbose`` each
    reason is cut to its first sentence, so the chain fits on a screen and names every step.
    """
    text = str(exc)
    lines = text.splitlines() or [type(exc).__name__]
    head = f"{type(exc).__name__}: {lines[0]}"
    attempts: list[tuple[str, str]] = []
    for line in lines[1:]:
        match = re.match(r"^\s+(\w*Credential): (.*)$", line)
        if match:
            attempts.append((match.group(1), match.group(2).strip()))
        elif attempts and line.strip() and not line.lower().startswith("to mitigate"):
            name, reason = attempts[-1]
            attempts[-1] = (name, f"{reason} {line.strip()}")
    out = [head]
    if verbose:
        out += [f"  {line}" for line in lines[1:]]
    elif attempts:
        out.append("  tried, in order:")
        for name, reason in attempts:
            if "unavailable" in reason.lower() or "not found on path" in reason.lower() or "not installed" in reason.lower():
                short = "not available here"
            else:
                short = re.split(r"(?<=[.!?])\s", reason, maxsplit=1)[0]
                short = short if len(short) <= 120 else short[:117] + "..."
            out.append(f"    {name}: {short}")
        out.append("  (run with -v for each credential's full reason)")
    elif len(lines) > 1:
        out.append("  (run with -v for the full message)")
    mentions_mi = "managedidentitycredential" in text.lower() or type(exc).__name__ == "CredentialUnavailableError"
    if mentions_mi and not os.environ.get("IDENTITY_ENDPOINT") and not os.environ.get("MSI_ENDPOINT"):
        out.append("hint: managed identity outside Azure needs IDENTITY_ENDPOINT and IDENTITY_HEADER (the emulator "
                   "prints them; `make run` prints the exports); without them azure-identity asks 169.254.169.254")
    out.append("hint: no credential worked; pass --connection-string, or --sas-key-name with env RELAY_SAS_KEY, "
               "or sign in (az login) / configure the identity")
    return out
