"""relay.redact: secrets never reach a log, whatever form they take; ordinary text is left alone."""

from __future__ import annotations

import logging

import pytest

from relay.redact import MASK, RedactingFilter, install, redact

JWT = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJodHRwczovL3JlbGF5LmF6dXJlLm5ldCJ9.c2lnbmF0dXJlLWJ5dGVz"
SAS = "SharedAccessSignature sr=sb%3a%2f%2fns%2finbound&sig=AbCdEf%2BgHi%3D&se=1767225600&skn=RootManageSharedAccessKey"

LEAKY = [
    (f"GET /$hc/inbound?sb-hc-action=connect&sb-hc-token={SAS.replace(' ', '+')} HTTP/1.1", ["AbCdEf"]),
    (f"ServiceBusAuthorization : {SAS}", ["AbCdEf", "sr=sb"]),
    (f"servicebusauthorization: {SAS}\r\nHost: x", ["AbCdEf"]),
    (f"Authorization: Bearer {JWT}", [JWT, "c2lnbmF0dXJl"]),
    (f"{{'Authorization': 'Bearer {JWT}', 'Host': 'h'}}", [JWT]),
    (f"Invalid header: b'Authorization :Bearer {JWT}'", [JWT]),
    (f"token {JWT} in the middle", [JWT]),
    ("https://h/x?code=func-key-123&x=1", ["func-key-123"]),
    ("https://h/x?a=1&sb-hc-token=SharedAccessSignature%20sr%3Dx%26sig%3Dsecretsig", ["secretsig"]),
    ("X-Functions-Key: k3y-value", ["k3y-value"]),
    ("x-api-key:abc123", ["abc123"]),
    ("Ocp-Apim-Subscription-Key: 0123456789abcdef", ["0123456789abcdef"]),
    ("Endpoint=sb://ns/;SharedAccessKeyName=Root;SharedAccessKey=c2VjcmV0a2V5PQ==", ["c2VjcmV0a2V5PQ=="]),
    ("Cookie: session=abcdef123456", ["abcdef123456"]),
    ("X-IDENTITY-HEADER: 5f1d2c3b-identity-secret", ["5f1d2c3b-identity-secret"]),
]


@pytest.mark.parametrize("text, secrets", LEAKY)
def test_secrets_are_redacted(text, secrets):
    out = redact(text)
    assert MASK in out
    for secret in secrets:
        assert secret not in out, out


@pytest.mark.parametrize("text", [
    "listener online on sb://127.0.0.1:9443/inbound",
    "request 3f0c on orders: listener 12 did not respond within 60 s",
    "closed with 1000 Normal Closure",
    "GET /orders/7?x=1&page=2 HTTP/1.1",
    "keyboard interrupt; monkey=1; codec=h264",
])
def test_ordinary_text_is_unchanged(text):
    assert redact(text) == text


def test_filter_redacts_args_exceptions_and_every_logger(caplog):
    logger = logging.getLogger("aiohttp.server")
    flt = RedactingFilter()
    caplog.handler.addFilter(flt)
    try:
        logger.error("Error handling request from %s: %r", "127.0.0.1", f"Authorization: Bearer {JWT}")
        try:
            raise ValueError(f"Invalid header value b'{SAS}'")
        except ValueError:
            logging.getLogger("emulator").exception("failed with sig=%s", "plain-sig-value")
    finally:
        caplog.handler.removeFilter(flt)
    text = caplog.text
    assert JWT not in text and "AbCdEf" not in text and "plain-sig-value" not in text
    assert text.count(MASK) >= 3


def test_install_puts_one_filter_on_every_handler():
    logger = logging.getLogger("relay.test-redact-install")
    handlers = [logging.StreamHandler(), logging.StreamHandler()]
    for handler in handlers:
        logger.addHandler(handler)
    try:
        first = install(logger)
        second = install(logger)
        assert first is second and all(h.filters.count(first) == 1 for h in handlers)
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
