"""Status → typed error mapping and the plain-words hints (pure logic)."""

import pytest
from azure.core.credentials import AzureNamedKeyCredential

from relay import (
    AuthorizationFailedError,
    EndpointNotFoundError,
    ForbiddenError,
    NoListenerError,
    PayloadTooLargeError,
    QuotaExceededError,
    RelayError,
    RelayTimeoutError,
    get_token_provider,
)
from relay._hints import add_hint
from relay.errors import error_from_status

TRACK = "TrackingId:abc_G1, SystemTracker:sb://ns/orders, Timestamp:2026-01-01T00:00:00"


@pytest.mark.parametrize("status, reason, cls, transient", [
    (401, f"InvalidSignature: The token has an invalid signature. {TRACK}", AuthorizationFailedError, False),
    (403, f"Unauthorized access. 'Send' claim(s) are required to perform this operation. {TRACK}", ForbiddenError, False),
    (403, "QuotaExceeded: The maximum number of listeners (25) for this endpoint has been reached.", QuotaExceededError, True),
    (404, f"Endpoint does not exist. {TRACK}", EndpointNotFoundError, False),
    (404, f"There are no listeners connected for the endpoint. {TRACK}", NoListenerError, True),
    (502, f"There are no listeners connected for the endpoint. {TRACK}", NoListenerError, True),
    (504, "The request was routed to the listener but the listener did not respond in the required time.", RelayTimeoutError, True),
    (413, "Request Entity Too Large", PayloadTooLargeError, False),
    (500, "Internal error", RelayError, True),
])
def test_status_mapping(status, reason, cls, transient):
    error = error_from_status(status, reason, context="GET sb://ns/orders")
    assert type(error) is cls and error.status == status and error.is_transient is transient
    assert str(error).startswith("GET sb://ns/orders: ")


def test_hints_name_the_cause():
    sas = get_token_provider(AzureNamedKeyCredential("send-orders", "k"))
    error = add_hint(error_from_status(401, "InvalidSignature: The token has an invalid signature."), sas, action="send", sb_uri="sb://ns/orders")
    assert "SAS key name or key is wrong" in str(error)
    error = add_hint(error_from_status(401, "InvalidAudience: wrong audience"), sas, action="send", sb_uri="sb://ns/orders")
    assert "another audience" in str(error)

    class FakeEntra:
        async def get_token(self, *scopes, **kw):
            raise NotImplementedError

    entra = get_token_provider(FakeEntra())
    error = add_hint(error_from_status(403, "Unauthorized access."), entra, action="listen", sb_uri="sb://ns/orders")
    assert "lacks the Azure Relay Listener role on sb://ns/orders" in str(error) and "five minutes" in str(error)
    anonymous = get_token_provider(None)
    error = add_hint(error_from_status(401, "MissingToken"), anonymous, action="send", sb_uri="sb://ns/orders")
    assert "no credential was given" in str(error)
