"""Canonical paths: the one place where a path from outside becomes a path that may cross a boundary.

Every path that crosses a boundary the configuration draws (the bridge's outbound allow-list,
an envelope's ``path``, the library's entity URLs, the on-premises forwarder's target) goes
through :func:`canonical_path` exactly once. The result, a :class:`CanonicalPath`, holds the
*decoded* segments; URLs are built from it with :func:`url_with_path`, which encodes each
segment once and hands the result to yarl with ``encoded=True``, so no later layer (yarl,
aiohttp, a proxy, the local service) can resolve, re-quote or re-split it.

The rules refuse rather than resolve, because every "helpful" normalisation is a place where
two layers may disagree (the attack behind ``/api/relay/echo/../inbound``):

* percent-decoding happens once; a segment that still holds a percent escape after that
  (``%252e``) is refused as double-encoded;
* ``.`` and ``..`` segments are refused in every spelling: raw, ``%2e``, ``.%2E``, ``..;x``
  (Tomcat-style path parameters) and Unicode forms that NFKC folds to dots;
* an encoded ``/`` or ``\\`` (``%2F``, ``%5C``) and a raw ``\\`` are refused: they would change
  the segmentation for some layer below;
* control characters (``%00``-``%1F``, ``%7F``, raw or encoded) are refused anywhere, query
  included; so are ``#`` and empty interior segments (``a//b``);
* bytes that are not UTF-8 are refused.

A query string is kept as given (its escapes are validated, raw characters that are not
allowed in a URL are encoded), since its values are data for the application, not structure.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import quote, unquote_to_bytes

from yarl import URL

__all__ = [
    "CanonicalPath",
    "PathError",
    "ROOT",
    "canonical_name",
    "canonical_path",
    "split_connection",
    "url_with_path",
]

_SEGMENT_SAFE = "!$&'()*+,;=:@"
"""RFC 3986 ``pchar`` characters left as they are (besides letters, digits and ``-._~``)."""
_QUERY_SAFE = "!$&'()*+,;=:@/?%"
"""Characters a query keeps raw; ``%`` because its escapes were validated first."""
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,258}[A-Za-z0-9])?$")


class PathError(ValueError):
    """A path was refused: the message names the part and the rule it broke.

    Always a permanent failure (``is_transient`` is False): the same input is refused again.
    Callers answer 400 (HTTP), refuse the WebSocket, or poison the queue message.
    """

    is_transient = False


@dataclass(frozen=True, slots=True)
class CanonicalPath:
    """A path that passed :func:`canonical_path`: decoded segments, a trailing-slash flag, a query.

    ``segments`` are decoded text and never contain ``/``, ``\\``, control characters or dot
    segments. Compare and match on ``segments`` (segment boundaries are exact); turn it into a
    URL only with :func:`url_with_path`, or take :attr:`path` / :attr:`target` (encoded once).
    """

    segments: tuple[str, ...] = ()
    trailing_slash: bool = False
    query: str = ""

    @property
    def path(self) -> str:
        """The encoded path: ``/a/b%20c`` (``/`` for the root, ``/a/`` with a trailing slash)."""
        if not self.segments:
            return "/"
        text = "/" + "/".join(quote(s, safe=_SEGMENT_SAFE) for s in self.segments)
        return text + "/" if self.trailing_slash else text

    @property
    def target(self) -> str:
        """``path`` plus ``?query`` when there is one: an HTTP request target."""
        return f"{self.path}?{self.query}" if self.query else self.path

    def __str__(self) -> str:
        return self.target

    def startswith(self, prefix: CanonicalPath | Iterable[str], *, case_sensitive: bool = True) -> bool:
        """True when ``prefix``'s segments are this path's first segments (a segment boundary, never mid-name)."""
        want = tuple(prefix.segments if isinstance(prefix, CanonicalPath) else prefix)
        have = self.segments[: len(want)]
        if len(have) != len(want):
            return False
        if case_sensitive:
            return have == want
        return tuple(s.lower() for s in have) == tuple(s.lower() for s in want)

    def relative_to(self, prefix: CanonicalPath | Iterable[str], *, case_sensitive: bool = True) -> CanonicalPath | None:
        """The rest below ``prefix`` (query kept), or ``None`` when this path is not under it."""
        want = tuple(prefix.segments if isinstance(prefix, CanonicalPath) else prefix)
        if not self.startswith(want, case_sensitive=case_sensitive):
            return None
        rest = self.segments[len(want):]
        return CanonicalPath(rest, self.trailing_slash, self.query)

    def joined(self, rest: CanonicalPath) -> CanonicalPath:
        """This path (a base) with ``rest`` below it; ``rest``'s trailing slash and query win."""
        if not rest.segments:
            return CanonicalPath(self.segments, rest.trailing_slash or self.trailing_slash, rest.query or self.query)
        return CanonicalPath(self.segments + rest.segments, rest.trailing_slash, rest.query)

    def without_query(self) -> CanonicalPath:
        return CanonicalPath(self.segments, self.trailing_slash, "")


ROOT = CanonicalPath()
"""The empty path ``/``."""


def _segment(raw: str, what: str) -> str:
    if _BAD_ESCAPE.search(raw):
        raise PathError(f"{what}: {raw!r} has a '%' that is not followed by two hex digits")
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise PathError(f"{what}: segment {raw!r} does not decode to UTF-8 text") from None
    if "/" in text or "\\" in text:
        raise PathError(f"{what}: segment {raw!r} hides a '/' or '\\' (encoded or raw); send separate segments instead")
    if _CONTROL.search(text):
        raise PathError(f"{what}: segment {raw!r} contains a control character")
    if _ESCAPE.search(text):
        raise PathError(f"{what}: segment {raw!r} is double-encoded (still holds a percent escape after decoding)")
    bare = unicodedata.normalize("NFKC", text.split(";", 1)[0])
    if bare in (".", ".."):
        raise PathError(f"{what}: dot segment {raw!r} refused (paths are never resolved; name the target directly)")
    return text


def canonical_path(raw: str, *, what: str = "path", allow_query: bool = True) -> CanonicalPath:
    """Parse a raw, percent-encoded path (``/a/b%20c?x=1``) into a :class:`CanonicalPath`, or raise :class:`PathError`.

    ``raw`` is what arrived on the wire (an HTTP request target, an envelope's ``path``, the
    part of a relayed URL below the hybrid connection). A missing leading ``/`` is added;
    ``""`` is the root. ``what`` names the input in error messages (``"envelope path"``).
    With ``allow_query=False`` a ``?`` is refused instead of starting a query.
    """
    if not isinstance(raw, str):
        raise PathError(f"{what}: expected text, got {type(raw).__name__}")
    if _CONTROL.search(raw):
        raise PathError(f"{what}: contains a control character (CR, LF, NUL or similar)")
    if "#" in raw:
        raise PathError(f"{what}: a fragment ('#') cannot be sent to a server")
    path, sep, query = raw.partition("?")
    if sep and not allow_query:
        raise PathError(f"{what}: a query string is not allowed here")
    if query:
        if _BAD_ESCAPE.search(query):
            raise PathError(f"{what}: the query has a '%' that is not followed by two hex digits")
        query = quote(query, safe=_QUERY_SAFE)
    if "\\" in path:
        raise PathError(f"{what}: '\\' is not a path separator here; use '/'")
    body = path[1:] if path.startswith("/") else path
    if not body:
        return CanonicalPath((), False, query)
    parts = body.split("/")
    trailing = parts[-1] == ""
    if trailing:
        parts.pop()
    if any(p == "" for p in parts):
        raise PathError(f"{what}: empty segment ('//') refused")
    return CanonicalPath(tuple(_segment(p, what) for p in parts), trailing, query)


def canonical_name(name: str, *, what: str = "hybrid connection name") -> str:
    """Check a hybrid connection name against Azure's rules and return it unchanged.

    1-260 characters of letters, digits, ``.``, ``-``, ``_`` and ``/``, starting and ending
    with a letter or digit (ARM naming rules), and no empty or dot segments.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise PathError(
            f"{what} {name!r} is not valid: use 1-260 letters, digits, '.', '-', '_' or '/', "
            "starting and ending with a letter or digit"
        )
    if any(seg in ("", ".", "..") for seg in name.split("/")):
        raise PathError(f"{what} {name!r} has an empty or dot segment")
    return name


def split_connection(path: CanonicalPath, names: Iterable[str]) -> tuple[str, CanonicalPath] | None:
    """Match ``path`` to the longest name in ``names`` at a segment boundary (case-insensitive, as in Azure).

    Returns ``(configured name, rest below it)`` or ``None``. Names may contain ``/``
    (``orders/eu`` wins over ``orders`` for ``/orders/eu/x``).
    """
    best: tuple[str, CanonicalPath] | None = None
    for name in names:
        rest = path.relative_to(name.split("/"), case_sensitive=False)
        if rest is not None and (best is None or len(name) > len(best[0])):
            best = (name, rest)
    return best


def url_with_path(base: str | URL, path: CanonicalPath) -> URL:
    """``base`` (scheme, host, port and an optional base path) with ``path`` below its path, encoded once.

    The base's own path is canonicalised too, so the result is always under it: nothing in
    ``path`` can reach outside the base or change the host. A query on ``base`` is refused
    (give it in ``path``); user info in ``base`` is refused (credentials do not belong in URLs).
    """
    url = base if isinstance(base, URL) else URL(base, encoded=True)
    if not url.absolute or not url.raw_host:
        raise PathError(f"base URL {str(url)!r} needs a scheme and a host (e.g. http://127.0.0.1:8080)")
    if url.raw_query_string or url.raw_fragment:
        raise PathError(f"base URL {str(url)!r} must not carry a query or fragment")
    if url.raw_user or url.raw_password:
        raise PathError(f"base URL {str(url)!r} must not carry user info")
    full = canonical_path(url.raw_path, what="base URL path", allow_query=False).joined(path)
    return URL.build(scheme=url.scheme, authority=url.raw_authority, path=full.path, query_string=full.query, encoded=True)
