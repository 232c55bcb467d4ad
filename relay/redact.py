"""Redaction of secrets in log text: one shared place for the emulator, the library and the on-premises agent.

Tokens, signatures and keys must never reach a log, including the logs of libraries we do not
control (aiohttp's server logger prints the offending bytes of a malformed request). Two tools:

* :func:`redact` returns text with every secret replaced by ``[REDACTED]``;
* :class:`RedactingFilter` is a :class:`logging.Filter` that rewrites each record's message
  (``msg % args``), its exception text and its stack text through :func:`redact`; install it
  on handlers with :func:`install` so that records of *every* logger (root, ``aiohttp.server``,
  ``aiohttp.access``, ``aiohttp.web``, ...) pass through it.

What is redacted, wherever it appears (case-insensitive): the values of the query or form
parameters ``sb-hc-token``, ``sb-hc-secret``, ``sig``, ``code``, ``token``, ``access_token``,
``key``, ``apikey``/``api-key``/``api_key``, ``secret`` and ``password`` (``se``, ``skn``, ``sr``
are not secret and stay readable); the values of the headers
``ServiceBusAuthorization``, ``Authorization``, ``Proxy-Authorization``, ``X-Functions-Key``,
``X-Api-Key``, ``Ocp-Apim-Subscription-Key``, ``Cookie``, ``Set-Cookie`` and ``X-IDENTITY-HEADER``
(also in ``name : value`` form with spaces, and in Python reprs such as ``'Authorization': '...'``);
``SharedAccessSignature ...`` strings; ``Bearer``/``Basic`` credentials; JWT-shaped strings
(three base64url parts, the first starting ``eyJ``); ``SharedAccessKey=``/``AccountKey=`` in
connection strings.
"""

from __future__ import annotations

import logging
import re

__all__ = ["MASK", "RedactingFilter", "install", "redact"]

MASK = "[REDACTED]"

_HEADER_NAMES = (
    r"servicebusauthorization|proxy-authorization|authorization|x-functions-key|x-api-key|ocp-apim-subscription-key"
    r"|set-cookie|cookie|x-identity-header|x-ms-identity-header|secret"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # JWTs anywhere (header.payload.signature, base64url; the header always starts with '{"' -> 'eyJ').
    # Truncated ones too ("b'Bearer eyJhbGci...'" in a parser error): any base64url run starting eyJ.
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}"), MASK),
    # A SAS token as a whole: everything after the scheme up to a quote, bracket or whitespace.
    (re.compile(r"(SharedAccessSignature)(\s+|%20|\+)[^\s'\"<>,;\]\)}]+", re.I), rf"\1\2{MASK}"),
    # Header values: "Name: value", "Name : value", "'Name': 'value'", "Name=value" up to the line end / quote.
    (re.compile(rf"(?<![A-Za-z0-9-])({_HEADER_NAMES})(['\"]?\s*[:=]\s*['\"]?)[^\r\n'\"]+", re.I), rf"\1\2{MASK}"),
    # Query/form parameters carrying secrets, raw or percent-encoded separators.
    (re.compile(r"(?<![A-Za-z0-9_-])(sb-hc-token|sb-hc-secret|sig|code|token|access_token|api[-_]?key|key|secret|password)"
                r"(=|%3D)[^&\s'\"<>#]+", re.I), rf"\1\2{MASK}"),
    # Connection-string keys.
    (re.compile(r"(SharedAccessKey|AccountKey|SharedAccessSignature)(=)[^;\s'\"]+", re.I), rf"\1\2{MASK}"),
    # Bearer / Basic credentials that slipped through without a header name.
    (re.compile(r"\b(Bearer|Basic)(\s+)[A-Za-z0-9._~+/=-]{8,}", re.I), rf"\1\2{MASK}"),
)


def redact(text: str) -> str:
    """``text`` with every token, signature and key replaced by ``[REDACTED]`` (see the module docs)."""
    if not text:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message, exception text and stack text of every record.

    The record's ``msg`` becomes the redacted, fully formatted message and ``args`` is cleared,
    so handlers and formatters further down see only redacted text. Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, redacted
            message = f"{record.msg} {record.args}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            record.exc_info = None  # formatters would otherwise re-render the raw exception
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach one :class:`RedactingFilter` to every handler of ``logger`` (default: the root logger).

    Filters on a *handler* see records from every logger that propagates to it (aiohttp's
    included), whereas a filter on a logger sees only that logger's own records. Call it after
    ``logging.basicConfig``. Returns the filter (idempotent: a handler gets it once).
    """
    target = logger or logging.getLogger()
    found = None
    for handler in target.handlers:
        for existing in handler.filters:
            if isinstance(existing, RedactingFilter):
                found = existing
    flt = found or RedactingFilter()
    for handler in target.handlers:
        if flt not in handler.filters:
            handler.addFilter(flt)
    return flt
