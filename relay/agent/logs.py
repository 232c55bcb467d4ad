"""One line per event, timestamped: readable text (default) or JSON (``--log-format json``).

What a line holds is chosen, never dumped: the time (UTC, ms), level, logger, the message, and
the ``fields`` a caller passed with ``extra={"fields": {...}}`` (``event``, ``connection``,
``request_id``, ``method``, ``status``, ``duration_ms``, ``bytes_in``, ``bytes_out``, ``state``,
``reason``, ...). The agent and the forwarder never put tokens, keys, query strings or bodies
into either, and the library's own messages are written to be free of them too.

Text::

    2026-12-01T22:40:00.123Z INFO  relay.forward request connection=orders request_id=7f.. method=GET status=200 ... | GET /api/x -> 200

JSON::

    {"ts": "2026-12-01T22:40:00.123Z", "level": "info", "logger": "relay.forward", "event": "request", "connection": "orders", ...}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from ..redact import RedactingFilter

__all__ = ["JsonFormatter", "TextFormatter", "setup_logging"]

_RESERVED = ("ts", "level", "logger", "message")


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


def _exception(record: logging.LogRecord) -> str | None:
    if not record.exc_info or record.exc_info[1] is None:
        return None
    exc = record.exc_info[1]
    # Type and message only: tracebacks are for debugging sessions, and a message from a library we
    # do not control is cut to its first line.
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER [event key=value ...] | message``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        event = fields.pop("event", None)
        parts = [_timestamp(record), f"{record.levelname:<5}", record.name]
        if event:
            parts.append(str(event))
        parts += [f"{k}={_text_value(v)}" for k, v in fields.items()]
        line = " ".join(parts) + " | " + record.getMessage()
        exc = _exception(record)
        if exc:
            line += f" ({exc})"
        return line.replace("\n", " ")


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message`` and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname.lower(), "logger": record.name}
        for key, value in _fields(record).items():
            if key not in _RESERVED:
                out[key] = value
        out["message"] = record.getMessage()
        exc = _exception(record)
        if exc:
            out["error"] = exc
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(log_format: str = "text", level: str = "info") -> logging.Handler:
    """Send all log records to stderr with the chosen formatter; returns the handler (replaced on reload)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    # Only chosen fields are logged, but third-party records (aiohttp, azure-identity) pass through too.
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # azure-identity, MSAL and aiohttp narrate every request (MSAL dumps token-cache events at DEBUG);
    # their warnings still come through.
    for noisy in ("azure", "msal", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler
