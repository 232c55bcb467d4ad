"""The canonical path rules (relay/paths.py): refuse, never resolve; encode once; stay under the base.

The property tests play a hostile downstream: whatever a later layer does with the URL we
built (decode once more, treat ``\\`` as ``/``, strip ``;params``, NFKC-fold, resolve dots), the
result must stay under the configured connection or base path.
"""

from __future__ import annotations

import posixpath
import unicodedata
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.paths import CanonicalPath, PathError, canonical_name, canonical_path, split_connection, url_with_path

REFUSED = [
    "/echo/../inbound/x", "/echo/%2e%2e/inbound", "/echo/%2E%2e/inbound", "/echo/.%2e/inbound", "/echo/%2e./inbound",
    "/echo/..%2Finbound", "/echo%2F..%2Finbound", "/echo/..;x/inbound", "/echo/./x", "/echo/%2e/x",
    "/echo/a%5C..%5Cinbound", "/echo\\..\\inbound", "/echo//x", "/echo/%00", "/echo/a\r\nX: y", "/echo/\x7f",
    "/echo/%252e%252e/inbound", "/echo/%ff", "/echo/%zz", "/echo/x#frag", "/echo/\uff0e\uff0e/inbound",
    "/echo%2F@evil:1/x", "/echo?x=%0",
]


@pytest.mark.parametrize("raw", REFUSED)
def test_refused(raw):
    with pytest.raises(PathError) as info:
        canonical_path(raw, what="test path")
    assert "test path" in str(info.value)
    assert info.value.is_transient is False


@pytest.mark.parametrize(
    "raw, segments, target",
    [
        ("", (), "/"),
        ("/", (), "/"),
        ("echo/x/", ("echo", "x"), "/echo/x/"),
        ("/a/b%20c?x=1&y=%2F", ("a", "b c"), "/a/b%20c?x=1&y=%2F"),
        ("/a/%E2%82%AC", ("a", "\u20ac"), "/a/%E2%82%AC"),
        ("/a/b c", ("a", "b c"), "/a/b%20c"),
        ("/a/...", ("a", "..."), "/a/..."),
        ("/a/.well-known", ("a", ".well-known"), "/a/.well-known"),
        ("/a?q=a b", ("a",), "/a?q=a%20b"),
    ],
)
def test_accepted(raw, segments, target):
    path = canonical_path(raw)
    assert path.segments == segments
    assert path.target == target
    assert canonical_path(path.target) == path  # canonical form is a fixed point


def test_query_refused_where_not_allowed():
    with pytest.raises(PathError, match="query"):
        canonical_path("/a?b", allow_query=False)


def test_split_connection_longest_at_segment_boundary():
    names = ["orders", "orders/eu", "echo"]
    assert split_connection(canonical_path("/Orders/EU/x?z=1"), names) == ("orders/eu", CanonicalPath(("x",), False, "z=1"))
    assert split_connection(canonical_path("/orders"), names) == ("orders", CanonicalPath())
    assert split_connection(canonical_path("/echoes/x"), names) is None  # prefix only at a segment boundary
    assert split_connection(canonical_path("/inbound/x"), names) is None


def test_url_with_path_stays_under_base():
    base = "http://127.0.0.1:8080/public/area/"
    assert str(url_with_path(base, canonical_path("/x/y?q=1"))) == "http://127.0.0.1:8080/public/area/x/y?q=1"
    assert str(url_with_path(base, canonical_path("/"))) == "http://127.0.0.1:8080/public/area/"
    assert str(url_with_path("http://[::1]:8080", canonical_path("/a b/@"))) == "http://[::1]:8080/a%20b/@"
    for bad in ("127.0.0.1:8080", "http://u:p@h/", "http://h/?q", "/relative"):
        with pytest.raises(PathError):
            url_with_path(bad, canonical_path("/x"))


@pytest.mark.parametrize("name", ["orders", "orders/eu", "a", "a.b-c_d", "x" * 260])
def test_valid_names(name):
    assert canonical_name(name) == name


@pytest.mark.parametrize("name", ["", "/orders", "orders/", "a/../b", "a//b", "-a", "a b", "x" * 261, "a/./b"])
def test_invalid_names(name):
    with pytest.raises(PathError):
        canonical_name(name)


# -- properties -----------------------------------------------------------------------------------

PIECES = st.sampled_from([
    "a", "b", "echo", "inbound", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "/", "\\", ";", "%00", "%0a",
    "%25", "%252e", "@", ":", "?", "#", "%", "\uff0e", "\u2024", "%e2%80%a4", " ", "~", "%41", "evil:1",
])
RAW_PATHS = st.lists(PIECES, max_size=12).map("".join)


def hostile_resolve(encoded_path: str) -> str:
    """What a lax downstream might make of a path: decode, '\\' as '/', drop ;params, NFKC, resolve dots."""
    text = unquote(unquote(encoded_path)).replace("\\", "/")
    segments = [unicodedata.normalize("NFKC", s.split(";", 1)[0]) for s in text.split("/")]
    return posixpath.normpath("/" + "/".join(segments).lstrip("/"))


@settings(max_examples=400, deadline=None)
@given(raw=RAW_PATHS)
def test_property_never_leaves_the_connection(raw):
    try:
        path = canonical_path("/echo/" + raw)
    except PathError:
        return
    match = split_connection(path, ["echo", "orders/eu"])
    assert match is not None and match[0] == "echo"
    url = url_with_path("https://ns.example", CanonicalPath(("echo",)).joined(match[1]))
    assert url.raw_host == "ns.example" and url.port == 443
    resolved = hostile_resolve(url.raw_path)
    assert resolved == "/echo" or resolved.startswith("/echo/")


@settings(max_examples=400, deadline=None)
@given(raw=RAW_PATHS)
def test_property_never_leaves_the_forward_base(raw):
    try:
        path = canonical_path(raw)
    except PathError:
        return
    url = url_with_path("http://127.0.0.1:8080/public/area/", path)
    assert (url.raw_host, url.port) == ("127.0.0.1", 8080)
    resolved = hostile_resolve(url.raw_path)
    assert resolved == "/public/area" or resolved.startswith("/public/area/")
