"""Inbound routing: which storage queue a message received from a hybrid connection goes to.

Rules come from ``INBOUND_ROUTES``, a JSON list evaluated in order, first match wins::

    [{"pathPrefix": "/orders", "queue": "orders-in"},
     {"header": "X-Route", "value": "eu", "queue": "eu-in"}]

``pathPrefix`` matches the request path relative to the hybrid connection at a segment
boundary (``/orders`` matches ``/orders`` and ``/orders/7``, not ``/orders-archive``).
``header`` matches a request header by name (case-insensitive) with ``value`` compared
exactly; without ``value`` the header only has to be present. A rule may also carry
``"connection": "inbound"`` to apply to one hybrid connection only. Nothing matched →
``INBOUND_DEFAULT_QUEUE``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

_QUEUE = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
_RULE_KEYS = {"pathPrefix", "header", "value", "queue", "connection"}


class RoutingError(ValueError):
    """A routing rule is malformed; the message names the rule."""


def validate_queue_name(name: str) -> str:
    """Raise :class:`RoutingError` unless ``name`` is a valid storage queue name."""
    if not isinstance(name, str) or not _QUEUE.match(name):
        raise RoutingError(f"{name!r} is not a valid queue name (3-63 lowercase letters, digits and single '-')")
    return name


@dataclass(frozen=True, slots=True)
class Route:
    """One rule: a path prefix or a header (with an optional value) → a queue."""

    queue: str
    path_prefix: str | None = None
    header: str | None = None
    value: str | None = None
    connection: str | None = None

    def matches(self, connection: str, path: str, headers: Mapping[str, str]) -> bool:
        if self.connection is not None and self.connection != connection:
            return False
        if self.path_prefix is not None:
            prefix = self.path_prefix.rstrip("/")
            if not prefix:
                return True
            return path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?")
        wanted = self.header.lower()  # type: ignore[union-attr]
        for name, actual in headers.items():
            if name.lower() == wanted:
                return self.value is None or actual == self.value
        return False


def parse_routes(data: Any) -> tuple[Route, ...]:
    """Validate the parsed ``INBOUND_ROUTES`` JSON; raises :class:`RoutingError`."""
    if not isinstance(data, list):
        raise RoutingError("must be a JSON list of rules like {\"pathPrefix\": \"/orders\", \"queue\": \"orders-in\"}")
    routes = []
    for i, rule in enumerate(data):
        where = f"rule {i}"
        if not isinstance(rule, dict):
            raise RoutingError(f"{where} must be a JSON object")
        unknown = sorted(set(rule) - _RULE_KEYS)
        if unknown:
            raise RoutingError(f"{where} has unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_RULE_KEYS))})")
        if "queue" not in rule:
            raise RoutingError(f"{where} needs a \"queue\"")
        try:
            queue = validate_queue_name(rule["queue"])
        except RoutingError as exc:
            raise RoutingError(f"{where}: {exc}") from None
        prefix, header, value, connection = (rule.get(k) for k in ("pathPrefix", "header", "value", "connection"))
        if (prefix is None) == (header is None):
            raise RoutingError(f"{where} needs exactly one of \"pathPrefix\" and \"header\"")
        if prefix is not None and (not isinstance(prefix, str) or not prefix.startswith("/")):
            raise RoutingError(f"{where}: \"pathPrefix\" must be a string starting with '/'")
        if header is not None and (not isinstance(header, str) or not header.strip()):
            raise RoutingError(f"{where}: \"header\" must be a header name")
        if value is not None and (header is None or not isinstance(value, str)):
            raise RoutingError(f"{where}: \"value\" must be a string and goes with \"header\"")
        if connection is not None and not isinstance(connection, str):
            raise RoutingError(f"{where}: \"connection\" must be a hybrid connection name")
        routes.append(Route(queue=queue, path_prefix=prefix, header=header, value=value, connection=connection))
    return tuple(routes)


def route(routes: tuple[Route, ...], default_queue: str, *, connection: str, path: str, headers: Mapping[str, str]) -> str:
    """The queue for a message: the first matching rule's queue, else ``default_queue``."""
    for rule in routes:
        if rule.matches(connection, path, headers):
            return rule.queue
    return default_queue
