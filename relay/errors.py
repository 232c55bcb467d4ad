"""Typed errors for Hybrid Connections, with retry hints.

Every error derives from :class:`RelayError`. ``is_transient`` tells a caller
whether trying again later can help (no listener, timeout, lost connection) or
not (bad credentials, missing role, unknown entity). Messages never contain
tokens or keys.
"""

from __future__ import annotations

from .protocol import tracking_id_from_reason


class RelayError(Exception):
    """Base class. ``status`` is the HTTP status the service answered, when there was one."""

    is_transient: bool = True
    default_status: int | None = None

    def __init__(self, message: str, *, status: int | None = None, tracking_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status if status is not None else self.default_status
        self.tracking_id = tracking_id


class AuthorizationFailedError(RelayError):
    """401: the token was missing, malformed, expired, signed with the wrong key or for another audience."""

    is_transient = False
    default_status = 401


class ForbiddenError(RelayError):
    """403: the token is valid but its identity lacks the right (Listen or Send) on this hybrid connection."""

    is_transient = False
    default_status = 403


class EndpointNotFoundError(RelayError):
    """404: the hybrid connection does not exist in this namespace (check the name and the namespace)."""

    is_transient = False
    default_status = 404


class NoListenerError(RelayError):
    """No listener is connected (or none passes the AllowedListeners filter). Retry later."""

    is_transient = True
    default_status = 502


class RelayTimeoutError(RelayError):
    """504 or a local deadline: the listener did not answer in time."""

    is_transient = True
    default_status = 504


class QuotaExceededError(RelayError):
    """A service limit was hit (for example 25 listeners per hybrid connection)."""

    is_transient = True


class ConnectionLostError(RelayError):
    """An established connection dropped (network, service recycle, listener went away)."""

    is_transient = True


class PayloadTooLargeError(RelayError):
    """The payload is larger than this client or the service accepts."""

    is_transient = False
    default_status = 413


class RejectedError(RelayError):
    """The listener rejected a WebSocket connection with its own status and description."""

    is_transient = False


_NO_LISTENER_MARKERS = ("no listeners connected", "allowedlisteners", "none of the connected listeners")


def error_from_status(status: int, reason: str, *, context: str = "") -> RelayError:
    """Map a service status and reason phrase to the matching error type.

    ``context`` (for example ``"listen on sb://ns/orders"``) is prefixed so that the
    message says what was being attempted.
    """
    prefix = f"{context}: " if context else ""
    text = f"{prefix}{status} {reason}".strip()
    tracking = tracking_id_from_reason(reason)
    lowered = reason.lower()
    if status == 401:
        return AuthorizationFailedError(text, status=status, tracking_id=tracking)
    if status == 403:
        if "quota" in lowered or "maximum number of listeners" in lowered:
            return QuotaExceededError(text, status=status, tracking_id=tracking)
        return ForbiddenError(text, status=status, tracking_id=tracking)
    if status == 404:
        if any(marker in lowered for marker in _NO_LISTENER_MARKERS):
            return NoListenerError(text, status=status, tracking_id=tracking)
        return EndpointNotFoundError(text, status=status, tracking_id=tracking)
    if status in (408, 504):
        return RelayTimeoutError(text, status=status, tracking_id=tracking)
    if status == 413:
        return PayloadTooLargeError(text, status=status, tracking_id=tracking)
    if status == 429 or "quota" in lowered:
        return QuotaExceededError(text, status=status, tracking_id=tracking)
    if status in (502, 503):
        return NoListenerError(text, status=status, tracking_id=tracking)
    error = RelayError(text, status=status, tracking_id=tracking)
    error.is_transient = status >= 500
    return error


# A listener's rejection carries its own description (the sender's handshake reason phrase).
RejectedError.description = ""
