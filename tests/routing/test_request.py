"""RequestView: built from a parsed head, lazily parsed headers and query, normalised path."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.routing.request import (
    Headers,
    RequestView,
    cookie_value,
    normalize_path,
    split_authority,
)

RAW = [(b"Host", b"Reviews.Default:9080"), (b"X-Trace", b"a"), (b"x-trace", b"b")]


@pytest.mark.parametrize(
    ("method", "target", "headers", "expected"),
    [
        # origin form: Host gives the authority (lowercased, port kept)
        (b"GET", b"/a/b?x=1&y", RAW, ("GET", "/a/b", "x=1&y", "reviews.default:9080", "http")),
        # absolute form: its authority replaces Host (RFC 9112 3.2.2), scheme from the URI
        (
            b"GET",
            b"HTTPS://Shop.Example.com:8443/cart?id=2",
            RAW,
            ("GET", "/cart", "id=2", "shop.example.com:8443", "https"),
        ),
        (b"GET", b"http://shop", RAW, ("GET", "/", "", "shop", "http")),
        (b"GET", b"http://shop?q=1", RAW, ("GET", "/", "q=1", "shop", "http")),
        (b"GET", b"http://user:pw@shop/x", RAW, ("GET", "/x", "", "shop", "http")),
        # authority form (CONNECT) and asterisk form
        (b"CONNECT", b"db:5432", [], ("CONNECT", "", "", "db:5432", "http")),
        (b"OPTIONS", b"*", [(b"host", b"shop")], ("OPTIONS", "*", "", "shop", "http")),
        # trailing dot of a fully qualified name, with and without port
        (b"GET", b"/", [(b"host", b"shop.default.")], ("GET", "/", "", "shop.default", "http")),
        (b"GET", b"/", [(b"host", b"shop.:80")], ("GET", "/", "", "shop:80", "http")),
        # no Host at all
        (b"GET", b"/", [], ("GET", "/", "", "", "http")),
        # paths are normalised
        (b"GET", b"/a/./b/../c?x", RAW, ("GET", "/a/c", "x", "reviews.default:9080", "http")),
    ],
)
def test_from_head(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    expected: tuple[str, str, str, str, str],
) -> None:
    view = RequestView.from_head(method, target, headers, port=15001)
    assert (view.method, view.path, view.query, view.authority, view.scheme) == expected
    assert view.port == 15001


def test_from_head_without_normalisation_keeps_the_path() -> None:
    view = RequestView.from_head("GET", "/a/../b", [], port=1, normalize=False)
    assert view.path == "/a/../b"


def test_headers_are_lowercase_and_repeated_ones_joined() -> None:
    view = RequestView.from_head(b"GET", b"/", RAW, port=1)
    assert view.headers.get("x-trace") == "a,b"
    assert view.headers.get("host") == "Reviews.Default:9080"
    assert view.headers.get("X-Trace") is None  # lookups take lowercase names
    assert "x-trace" in view.headers  # type: ignore[operator]
    cookies = Headers([(b"cookie", b"a=1"), (b"Cookie", b"b=2")])
    assert cookies.get("cookie") == "a=1; b=2"


def test_headers_of_text() -> None:
    h = Headers.of({"X-A": "1", "x-b": "2"})
    assert h.get("x-a") == "1"
    assert h.as_dict() == {"x-a": "1", "x-b": "2"}
    assert Headers.of([("A", "1"), ("a", "2")]).get("a") == "1,2"
    assert "x-a" in repr(h)


@pytest.mark.parametrize(
    ("query", "name", "expected"),
    [
        ("a=1&b=2", "b", "2"),
        ("a=1&a=2", "a", "1"),  # the first value
        ("flag&x=1", "flag", ""),  # present without a value
        ("x=%2Fp%20q", "x", "/p q"),  # percent-decoded
        ("%78=1", "x", "1"),
        ("x=a+b", "x", "a+b"),  # '+' is not a space (Envoy does not decode it)
        ("a=1&&b=2", "b", "2"),
        ("a=1", "b", None),
        ("", "a", None),
    ],
)
def test_query_param(query: str, name: str, expected: str | None) -> None:
    assert RequestView(query=query).query_param(name) == expected


def test_target() -> None:
    assert RequestView(path="/p", query="q=1").target == "/p?q=1"
    assert RequestView(path="/p").target == "/p"
    assert "GET http://h/p" in repr(RequestView(path="/p", authority="h"))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a/b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/../../a", "/a"),
        ("/..", "/"),
        ("/%2e%2e/admin", "/admin"),  # encoded dots are dots
        ("/a/%2E/b", "/a/b"),
        ("/%61dmin", "/admin"),  # unreserved characters are decoded
        ("/%7euser", "/~user"),
        ("/a%2fb", "/a%2Fb"),  # escaped slashes stay escaped, hex upper-cased
        ("/a%20b", "/a%20b"),
        ("/a%zz", "/a%zz"),  # not an escape
        ("/a%4", "/a%4"),
        ("/a/.hidden/..b", "/a/.hidden/..b"),
    ],
)
def test_normalize_path(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


@given(st.text(alphabet="/.%2eEaA5fF", min_size=1, max_size=30).map(lambda s: "/" + s))
def test_normalize_path_is_idempotent_and_leaves_no_dot_segments(path: str) -> None:
    once = normalize_path(path)
    assert normalize_path(once) == once
    assert once.startswith("/")
    assert "." not in once.split("/")
    assert ".." not in once.split("/")


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("shop", ("shop", None)),
        ("shop:8080", ("shop", 8080)),
        ("shop:http", ("shop:http", None)),
        ("[2001:db8::1]:443", ("[2001:db8::1]", 443)),
        ("[2001:db8::1]", ("[2001:db8::1]", None)),
        ("[2001:db8::1", ("[2001:db8::1", None)),
        ("2001:db8::1", ("2001:db8::1", None)),
    ],
)
def test_split_authority(authority: str, expected: tuple[str, int | None]) -> None:
    assert split_authority(authority) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("session=abc", "abc"),
        ("a=1; session=xyz; b=2", "xyz"),
        ('session="quoted"', "quoted"),
        ("sessionx=1", None),
        ("session", None),
        (None, None),
    ],
)
def test_cookie_value(header: str | None, expected: str | None) -> None:
    headers = Headers.of({"cookie": header} if header is not None else {})
    assert cookie_value(headers, "session") == expected


@given(
    st.binary(max_size=40),
    st.binary(max_size=60),
    st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=20)), max_size=6),
)
def test_from_head_never_raises(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    view = RequestView.from_head(method, target, headers, port=80)
    view.headers.get("host")
    view.query_param("a")
